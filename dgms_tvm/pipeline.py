"""End-to-end entry points behind the CLIs: load a model, compile it to an artifact, run it."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import tvm

from . import (
    artifact,
    calibration,
    choice,
    compiler,
    frontend,
    interrupt,
    outputs,
    strategies,
    zoo,
)
from .errors import UserError
from .format import FormatError, check_bits
from .passes.records import widened_note
from .targets import get_profile


@dataclasses.dataclass
class LoadedModel:
    """An imported model and, for built-in ones, the torch model and an example input."""

    imported: frontend.ImportedModel
    name: str
    torch_model: object = None
    example_input: np.ndarray | None = None
    bits: int | None = None  # the width a built-in model was quantized at

    def example(self, seed: int = 0) -> np.ndarray:
        """The built-in model's example input, else a seeded normal one of the input shape."""
        if self.example_input is not None:
            return self.example_input
        _, shape, dtype = self.imported.inputs[0]
        return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def rel_err(got, want) -> float:
    """max|got - want| / max|want|: how every comparison in the project is stated."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def load_model(spec: str, bits: int | None = 4, seed: int = 0) -> LoadedModel:
    """A built-in model name, a ``.onnx`` file or a ``.pt2`` (``torch.export.save``) file."""
    if bits is not None:
        try:
            check_bits(bits)
        except FormatError as err:
            raise UserError(str(err)) from None
    check_model(spec)
    if spec in zoo.MODELS:
        bits = 4 if bits is None else bits
        built = zoo.build(spec, bits, seed)
        declared = {name: cw.bits for name, cw in built.codebooks.items()}
        imported = frontend.from_torch(built.model, (built.example_input,), declared)
        imported.source = f"built-in {spec} (seed {seed}, {bits}-bit)"
        return LoadedModel(imported, spec, built.model, built.example_input.numpy(), bits)
    path = Path(spec)
    load = frontend.load_onnx if path.suffix == ".onnx" else frontend.load_pt2
    return LoadedModel(load(path), path.stem)


def check_model(spec: str) -> None:
    """Refuse a model that is neither a built-in name nor an existing .onnx / .pt2 file
    (cheap: commands check it before starting anything)."""
    if spec in zoo.MODELS:
        return
    path = Path(spec)
    if path.suffix not in (".onnx", ".pt2"):
        if not path.exists():
            raise UserError(f"model {spec!r} is neither a built-in model "
                            f"({', '.join(zoo.MODELS)}) nor an existing .onnx / .pt2 file")
        raise UserError(f"{spec}: unknown model file type (expected .onnx or .pt2)")
    if not path.is_file():
        raise UserError(f"model file {spec} not found")


def onnx_of(loaded: LoadedModel, model: str, x) -> bytes | None:
    """The model as ONNX (a built-in is exported; an .onnx file is read), else None."""
    from .frontend import onnx_bytes

    if loaded.torch_model is not None:
        import torch

        return onnx_bytes(loaded.torch_model, (torch.from_numpy(x),))
    return Path(model).read_bytes() if model.endswith(".onnx") else None


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


@dataclasses.dataclass
class Build:
    """One build of a model for a target: the lowering records, the prepared module (its
    PrimFuncs are the kernels that run), the executable and its manifest."""

    lowered: compiler.Lowered
    module: object
    executable: object
    manifest: dict


def build_model(loaded: LoadedModel, profile, bits: int | None, fp32: bool,
                quiet: bool = True, t0: float | None = None,
                tuning_logs: Path | None = None, strategy: str = "auto",
                calibration_inputs: list[np.ndarray] | None = None,
                choose: bool = False) -> Build:
    """Lower, schedule and compile an imported model for ``profile``; kernels with a record
    in the target's tuning database under ``tuning_logs`` (``<root>/<target>/``, whatever
    model the records came from: they are keyed by each kernel's structure) get their tuned
    schedule. ``strategy``: see :func:`strategies.resolve` (the FP32 build has no
    codebook layer to apply it to). ``calibration_inputs``: what int8 between layers is
    calibrated on (default: the model's example input and 7 drawn around it). ``choose``:
    each conv takes the strategy or ``exact``, whichever measured faster for it
    (:mod:`.choice`; the manifest's ``choices`` has both figures)."""
    from .schedules import apply_records, tuning_db

    t0 = t0 or time.perf_counter()
    resolved = strategies.resolve(strategy, profile)
    cal = calibration_inputs or calibration.samples(loaded.example())
    _log(f"[2/4] lowering codebook layers ({time.perf_counter() - t0:.1f} s)", quiet)
    lowered = compiler.lower(loaded.imported, bits, codebooks=not fp32, strategy=resolved,
                             profile=profile, calibration=cal)
    choices = None
    if choose and not fp32 and choice.other(profile, resolved):
        lowered, choices = choice.choose(
            loaded, lowered, profile, resolved, bits, cal,
            lambda m: _log(f"[2/4] {m} ({time.perf_counter() - t0:.1f} s)", quiet))
    interrupt.check()  # TVM swallows a KeyboardInterrupt: here it ends the build all the same
    if note := widened_note(lowered.records):
        _log(note, False)
    _log(f"[3/4] building for {profile.name} ({profile.triple}, {profile.mcpu}) "
         f"({time.perf_counter() - t0:.1f} s)", quiet)
    db, folder = tuning_db.load(tuning_logs, profile.name, log=lambda m: _log(m, False))
    applied: dict[str, str] = {}
    module = compiler.prepare(lowered, profile, database=db, applied=applied)
    interrupt.check()
    exe = tvm.compile(module, target=profile.tvm_target())
    interrupt.check()
    manifest = make_manifest(loaded, lowered, profile, bits, fp32)
    if not fp32:
        recs = lowered.records
        manifest["strategy"] = {"requested": strategy, "resolved": resolved, "layers": {
            "exact": sum(r.strategy == "exact" for r in recs),
            "int8": sum(r.strategy == "int8" and r.lowered for r in recs),
            "lut": sum(r.strategy == "lut" for r in recs),
            # layers that are no codebook (the stem) in the int8 kernel, weights per channel
            "int8 per-channel": sum(r.strategy == "int8" and not r.lowered for r in recs)}}
        if choices is not None:
            manifest["choices"] = choices
        if chained := sum(bool(r.output) for r in recs):
            manifest["calibration"] = {
                "layers": chained, "inputs": len(cal),
                "source": "--calibration" if calibration_inputs else
                "the example input and inputs drawn around it"}
    tuned = sorted(k for k, v in applied.items() if v == apply_records.TUNED)
    matched = sum(v in apply_records.MATCHED for v in applied.values())
    manifest["tuning"] = {"logs": str(folder) if db is not None else None,
                          "kernels": applied, "matched": matched, "tuned": len(tuned)}
    if db is not None:
        manifest["schedules"] = (f"tuned records from {folder} ({len(tuned)} of "
                                 f"{len(applied)} kernels); hand-written "
                                 f"schedules/{profile.schedule}.json for the rest")
        if matched:
            kept = matched - len(tuned)
            _log(f"tuning: {matched} of {len(applied)} kernels matched a record in {folder}"
                 + (f" ({kept} keep TVM's default, which their records measured best)"
                    if kept else ""), quiet)
        else:
            _log(f"warning: tuning: 0 of {len(applied)} kernels matched a record in {folder}: "
                 "no record matches a kernel of this build (another target's or an older "
                 "version's kernels?); it is built untuned", False)
    elif tuning_logs is not None and folder is not None and \
            not (folder / tuning_db.DB_FILES[1]).exists():
        _log(f"tuning: no database in {folder}; hand schedules", quiet)
    return Build(lowered, module, exe, manifest)


def write_artifact(build: Build, profile, output: Path) -> None:
    """The library and its manifest into the artifact folder ``output``, atomically; a full
    disk or an unwritable location is one line (the linker's message buried "No space left
    on device")."""
    fcompile = profile.cross_compiler()
    try:
        with artifact.staging(output) as tmp:
            kwargs = {"fcompile": fcompile} if fcompile is not None else {}
            build.executable.export_library(str(tmp / artifact.LIBRARY), **kwargs)
            interrupt.check()  # before the rename: an interrupted build leaves nothing
            build.manifest.update(artifact.library_fields(tmp / artifact.LIBRARY))
            artifact.write_manifest(tmp, build.manifest)
    except (OSError, RuntimeError) as err:  # RuntimeError: TVM's, with the linker's output
        if isinstance(err, OSError) or outputs.no_space(err):
            raise UserError(outputs.describe(err, output, "artifact")) from None
        raise


def compile_model(model: str, target: str, output: Path, bits: int | None = 4,
                  fp32: bool = False, seed: int = 0, quiet: bool = False,
                  loaded: LoadedModel | None = None,
                  tuning_logs: Path | None = None, strategy: str = "auto",
                  calibration_arrays: list[np.ndarray] | None = None,
                  choose: bool = False) -> dict:
    """Compile ``model`` for ``target`` into the artifact folder ``output`` (``loaded``: the
    model already loaded, so that several builds of one model import it once;
    ``tuning_logs``: the root of the tuning logs to apply, None for none;
    ``calibration_arrays``: a user's calibration inputs, see :func:`calibration.given`).

    Returns
    -------
    dict
        The manifest written beside the library.
    """
    profile = get_profile(target)
    if choose and not fp32:
        # before any work: a target it cannot measure is bad input
        choice.check(profile, strategies.resolve(strategy, profile))
    profile.cross_compiler()  # fail early when the cross compiler is missing
    artifact.check_output_dir(output)
    outputs.check_writable(output, "artifact")  # a read-only or full disk: now, not after
    t0 = time.perf_counter()
    _log(f"[1/4] importing {model}", quiet)
    loaded = loaded or load_model(model, bits, seed)
    interrupt.check()
    for note in loaded.imported.notes:
        _log(f"warning: {note}", False)
    strategies.check(strategy)  # a bad value fails before the import
    cal = None
    if calibration_arrays is not None:
        _, shape, dtype = loaded.imported.inputs[0]
        cal = calibration.given(calibration_arrays, shape, dtype)
    build = build_model(loaded, profile, bits, fp32, quiet, t0, tuning_logs, strategy, cal,
                        choose)
    _log(f"[4/4] writing {output} ({time.perf_counter() - t0:.1f} s)", quiet)
    write_artifact(build, profile, output)
    _log(f"done in {time.perf_counter() - t0:.1f} s", quiet)
    return build.manifest


def make_manifest(loaded: LoadedModel, lowered: compiler.Lowered, profile, bits, fp32) -> dict:
    import tvm

    imported = loaded.imported
    layers = [r.to_json() for r in lowered.records]
    dense_bytes = sum(int(np.prod(r.shape)) * 4 for r in lowered.records)
    packed = sum(r.packed_bytes if r.lowered else int(np.prod(r.shape)) * 4
                 for r in lowered.records)
    return {
        "format": artifact.ARTIFACT_FORMAT,
        "model": loaded.name,
        "source": imported.source,
        # a built-in model compiled without --bits: the width it was quantized at; a file's
        # None: any width up to 8 accepted (each layer says its own)
        "bits": bits if bits is not None else loaded.bits,
        "codebook_lowering": not fp32,
        "tvm_version": tvm.__version__,
        "target": {
            "name": profile.name, "triple": profile.triple, "mcpu": profile.mcpu,
            "mattr": list(profile.mattr), "num_cores": profile.num_cores,
            "tvm_target": str(profile.tvm_target()),
        },
        "library": artifact.LIBRARY,
        "entry": "main",
        "schedules": f"schedules/{profile.schedule}.json (hand-written)",
        "inputs": [{"name": n, "shape": list(s), "dtype": d} for n, s, d in imported.inputs],
        "outputs": compiler.outputs_of(lowered.mod),
        "layers": layers,
        "summary": {
            "layers_seen": len(layers),
            "layers_lowered": sum(r.lowered for r in lowered.records),
            "weight_bytes_fp32": dense_bytes,
            "weight_bytes_codebook": packed,
        },
    }


def format_table(manifest: dict) -> str:
    """The short table printed after a compile: what was lowered, what stayed FP32."""
    rows = [("layer", "op", "shape", "bits", "used", "sparsity", "lowered to / why FP32")]
    for r in manifest["layers"]:
        rows.append((
            r["name"], r["op"] + (" (scaled)" if r["scaled"] else ""),
            "x".join(map(str, r["shape"])),
            str(r["bits"] or "-"), str(r["codebook_entries"] or "-"),
            f"{r['sparsity']:.1%}" if r["sparsity"] is not None else "-",
            (r["kernel"] and r["kernel"] + (f" ({r['zero_inputs']} all-zero inputs skipped)"
                                            if r.get("zero_inputs") else "")
             + (f" ({r['reason']})" if r["reason"] else ""))
            or (f"{r['fp32_kernel']} (FP32 weight as int8 per channel)"
                            if r["strategy"] == "int8" else
                            f"FP32 ({r['fp32_kernel'] or 'TVM default'}): "
                            + r["reason"].split(";")[0]),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    s = manifest["summary"]
    lines.append(
        f"{s['layers_lowered']} of {s['layers_seen']} conv2d/dense layers lowered to codebook "
        f"kernels; weights {s['weight_bytes_fp32'] / 2**20:.2f} MiB FP32 -> "
        f"{s['weight_bytes_codebook'] / 2**20:.2f} MiB; target {manifest['target']['name']}")
    if "strategy" in manifest:
        st = manifest["strategy"]
        lines.append(f"strategy {st['requested']} -> {st['resolved']}: " + ", ".join(
            f"{n} layers {k}" for k, n in st["layers"].items() if n))
    if ch := manifest.get("choices"):
        picked = [c["chosen"] for c in ch["layers"].values()]
        line = f"chosen by measurement ({ch['measure']}): " + ", ".join(
            f"{picked.count(k)} layers {k}" for k in sorted(set(picked)))
        if whole := ch.get("model_ms"):
            line += (f"; the whole model {whole['as chosen']} ms as chosen against "
                     f"{whole['plain']} ms without: " + ("kept" if whole["kept"] else
                                                        "not kept"))
        lines.append(line)
    if cal := manifest.get("calibration"):
        lines.append(f"int8 between layers: {cal['layers']} layers write the next int8 conv's "
                     f"input, scales calibrated on {cal['inputs']} inputs ({cal['source']})")
    return "\n".join(lines)


def run_artifact(folder: Path, inputs: list[np.ndarray] | dict[str, np.ndarray],
                 tracker: str | None = None, key: str | None = None, timeout: float = 120.0,
                 allow_nonfinite: bool = False) -> list[np.ndarray]:
    """Run an artifact on ``inputs`` (in the model's order, or by its input names): x86 ones
    here, aarch64 ones on a device from a tracker (``tracker``/``key``; by default the
    emulated devices started by scripts/device.py, under the artifact's target name). Input
    with NaN or Inf is refused unless ``allow_nonfinite``."""
    import tvm

    manifest = artifact.load(folder)
    tgt = manifest["target"]
    inputs = _by_name(manifest, inputs) if isinstance(inputs, dict) else inputs
    _check_inputs(manifest, inputs, allow_nonfinite)
    if not tgt["triple"].startswith("x86_64"):
        from .device.client import Tracker, default_tracker, parse_tracker, run_remote

        trk = Tracker(*parse_tracker(tracker)) if tracker else default_tracker()
        if not trk.reachable():
            raise UserError(f"artifact {folder} is built for {tgt['name']} ({tgt['triple']}): "
                            f"it runs on a device through a TVM tracker, and tracker {trk} is "
                            f"unreachable (start emulated devices with: scripts/device.py "
                            f"start --cpu {tgt['name']}, or give --tracker HOST:PORT)")
        return run_remote(Path(folder), inputs, trk, key or tgt["name"], timeout)
    lib = tvm.runtime.load_module(str(Path(folder) / manifest["library"]))
    return compiler.run_local(lib, inputs)


def _by_name(manifest: dict, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Named arrays in the model's input order: every name one of its inputs, none missing."""
    names = [s["name"] for s in manifest["inputs"]]
    unknown = [k for k in inputs if k not in names]
    missing = [n for n in names if n not in inputs]
    said = ([f"names {', '.join(unknown)}, which the model lacks"] if unknown else []) + (
        [f"lacks {', '.join(missing)}"] if missing else [])
    if said:
        raise UserError(f"the input file {' and '.join(said)} (the model's inputs: "
                        f"{', '.join(names)})")
    return [inputs[n] for n in names]


def _check_inputs(manifest: dict, inputs: list[np.ndarray], allow_nonfinite: bool) -> None:
    specs = manifest["inputs"]
    if len(inputs) != len(specs):
        raise UserError(f"model takes {len(specs)} input(s), got {len(inputs)}")
    for a, s in zip(inputs, specs, strict=True):
        if list(a.shape) != s["shape"] or str(a.dtype) != s["dtype"]:
            raise UserError(f"input {s['name']} must be {s['dtype']}{s['shape']}, "
                            f"got {a.dtype}{list(a.shape)}")
        bad = 0 if allow_nonfinite or a.dtype.kind != "f" else int((~np.isfinite(a)).sum())
        if bad:
            raise UserError(f"input {s['name']} holds {bad} NaN or Inf value(s): the kernels' "
                            "clamps and int8 rounding would give finite, meaningless outputs "
                            "(--allow-nonfinite runs it anyway)")
