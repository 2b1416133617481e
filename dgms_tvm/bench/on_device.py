"""FP32 vs DGMS on a Cortex-A device from a TVM tracker, side by side from one run.

Both builds go through the same pipeline, kernels and schedules; the FP32 build holds the
same (quantized) weight values in float32, so it is also the reference the DGMS outputs are
checked against. Latency comes from ``time_evaluator`` on the device. On an emulated device
that time is emulation time, not an ARM speed measure: the report says so.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from .. import artifact, compiler, pipeline
from ..device.client import Tracker, check_compatible
from ..device.cycles import model_of
from ..errors import UserError
from ..measure.jobs import NO_CYCLES, Device, Job, kernel_job, run_jobs
from ..measure.jobs import log as _log
from ..targets import get_profile
from . import ort_int8
from .ort_int8 import PEER_CONFIGS, PEERS
from .report import layers as _layers
from .report import sparsity as _sparsity
from .report import write_report


@dataclasses.dataclass
class Row:
    label: str
    median_ms: float
    min_ms: float
    max_ms: float
    library_bytes: int
    weight_bytes: int
    lowered: int
    minstr: float | None = None  # M aarch64 instructions per inference (emulated device)
    mcycles: float | None = None  # M estimated cycles per inference (device.cycles)
    hot: list | None = None  # the blocks charged the most cycles (cycles.Hot, as dicts)


def _model_job(job: Job, dev: Device, x: np.ndarray, repeat: int, number: int) -> dict:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(dev.module(job.path), dev.dev)
    arg = tvm.runtime.tensor(x, dev.dev)
    out = vm["main"](arg)
    out = (out if isinstance(out, tvm.runtime.Tensor) else out[0]).numpy()
    res = vm.time_evaluator("main", dev.dev, number=number, repeat=repeat)(arg)
    ms = [1e3 * s for s in res.results]
    minstr, cycles = None, NO_CYCLES
    if dev.counter is not None:
        def make_eval(n, r):
            ev = vm.time_evaluator("main", dev.dev, number=n, repeat=r)
            return lambda: ev(arg)

        _, minstr, cycles = dev.measure(make_eval, 1, 1)
    return {"output": out, "ms": ms, "minstr": minstr, **cycles}

def device_count(tracker: Tracker, key: str) -> int:
    """Devices free under ``key`` now (at least 1: a busy farm is waited for)."""
    return max(1, tracker.free(key))

def check_args(model: str, bits: int, target: str, output: Path, repeat: int = 5,
               number: int = 1, emulated: bool = True):
    """Refuse bad arguments before anything starts (devices take a minute to come up).
    Returns the target profile."""
    from ..format import FormatError, check_bits

    pipeline.check_model(model)
    try:
        check_bits(bits)
    except FormatError as err:
        raise UserError(str(err)) from None
    profile = get_profile(target)
    if not profile.is_arm:
        raise UserError(f"bench runs on a Cortex-A device; {target} is not one "
                        "(use scripts/bench_x86.py for this host)")
    if emulated and profile.qemu_cpu is None:
        raise UserError(f"{target} has no emulated device: give --tracker and --key of a board")
    if repeat < 1 or number < 1:
        raise UserError("--repeat and --number must be at least 1")
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise UserError(f"output {output} exists and is not a folder")
    for sub in ("fp32", f"dgms-w{bits}"):
        artifact.check_output_dir(output / sub)
    return profile

def run(model: str, bits: int, target: str, tracker: Tracker, key: str | None,
        output: Path, repeat: int = 5, number: int = 1, seed: int = 0,
        emulated: bool = True, counting: bool = True, peers: bool = True,
        per_layer: bool = True, workers: int | None = None,
        tuning_logs: Path | None = None, strategy: str = "auto",
        provenance: dict | None = None) -> dict:
    """Compile both builds, run them (and their kernels one by one) on every free device
    under the key, write the report files (with ``provenance``: the command that ran it,
    :func:`.provenance.record`)."""
    import tvm

    profile = check_args(model, bits, target, output, repeat, number, emulated)
    key = key or profile.name
    if not tracker.reachable():
        raise UserError(f"tracker {tracker} is unreachable (start emulated devices with: "
                        f"scripts/device.py start --cpu {profile.name})")
    output.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    loaded = pipeline.load_model(model, bits, seed)  # once, for both builds
    x = loaded.example(seed)
    labels = {"FP32": True, f"DGMS {bits}-bit": False}
    builds, folders, sites, keys, funcs, jobs = {}, {}, {}, {}, {}, []
    for i, (label, fp32) in enumerate(labels.items(), 1):
        _log(f"[{i}/3] compiling {label} for {profile.name}")
        folder = output / ("fp32" if fp32 else f"dgms-w{bits}")
        artifact.check_output_dir(folder)
        b = pipeline.build_model(loaded, profile, bits, fp32, tuning_logs=tuning_logs,
                                 strategy=strategy)
        pipeline.write_artifact(b, profile, folder)
        check_compatible(b.manifest, key)
        builds[label], folders[label] = b, folder
        jobs.append(Job(f"{label} model", "model", label, folder / b.manifest["library"]))
        if per_layer:
            sites[label] = compiler.call_sites(b.module)
            keys[label] = compiler.site_layers(b.module)
            kmod = compiler.kernel_module(b.module)
            kpath = folder / "kernels.so"
            tvm.compile(kmod, target=profile.tvm_target()).export_library(
                str(kpath), fcompile=profile.cross_compiler())
            for name in dict.fromkeys(sites[label]):
                funcs[(label, name)] = kmod[name]
                jobs.append(Job(f"{label} kernel {name}", "kernel", label, kpath, name))
    onnx_fp32 = pipeline.onnx_of(loaded, model, x) if emulated and peers else None
    if emulated and peers and onnx_fp32 is None:
        _log("  (no ONNX form of this model: no onnxruntime peer rows)")
    if onnx_fp32 is not None:
        jobs[2:2] = [Job(label, "peer", label) for label in PEERS]
    kit = None
    if not emulated and peers:  # onnxruntime is no TVM module: the peers to time by hand
        onnx_board = pipeline.onnx_of(loaded, model, x)
        if onnx_board is not None:
            from .peer_kit import write_kit

            kit = str(write_kit(onnx_board, x, output / "peers").relative_to(output))
    workers = workers or device_count(tracker, key)
    _log(f"[3/3] running {len(jobs)} jobs on {workers} device(s) under key {key!r} from "
         f"tracker {tracker}")

    def run_one(job: Job, dev: Device | None) -> dict:
        if job.kind == "model":
            return _model_job(job, dev, x, repeat, number)
        if job.kind == "kernel":
            return kernel_job(job, dev, funcs[(job.build, job.name)], repeat, number)
        return _peer(job.label, onnx_fp32, x, profile, repeat, output)

    run_jobs(jobs, run_one, tracker, key, profile, output, emulated and counting, workers)
    by = {(j.kind, j.build, j.name): j.result for j in jobs}
    rows, outs = [], {}
    for label, b in builds.items():
        res = by[("model", label, None)]
        outs[label] = res["output"]
        s = b.manifest["summary"]
        rows.append(Row(label, float(np.median(res["ms"])), min(res["ms"]), max(res["ms"]),
                        (folders[label] / b.manifest["library"]).stat().st_size,
                        s["weight_bytes_codebook"], s["layers_lowered"], res["minstr"],
                        res["mcycles"], res["hot"]))
    ref, got = outs.values()
    err = pipeline.rel_err(got, ref)
    int8_layers = sum(v for k, v in (builds[f"DGMS {bits}-bit"].manifest.get("strategy")
                                     or {}).get("layers", {}).items() if k.startswith("int8"))
    # Exact layers match the FP32 build (the same weight values) to rounding; int8 layers
    # round activations and codebook to 8 bits, so only a gross difference is an error.
    limit = 0.25 if int8_layers else 1e-4
    if err > limit:
        raise UserError(f"DGMS outputs differ from the FP32 reference by {err:.2e} relative "
                        f"(limit {limit:g})")
    for label in PEERS if onnx_fp32 is not None else ():
        res = by[("peer", label, None)]
        if "FP32" in label and pipeline.rel_err(res["output"], ref) > 1e-3:
            raise UserError("onnxruntime FP32 disagrees with our FP32 build by "
                            f"{pipeline.rel_err(res['output'], ref):.1e}")
        ms = res["ms"]
        rows.append(Row(label, float(np.median(ms)), min(ms), max(ms), res["bytes"],
                        res["bytes"], 0, res["minstr"], res.get("mcycles"), res.get("hot")))
    counted = rows[0].minstr is not None
    int8_peers = {r.label: (r.minstr if counted else r.median_ms) for r in rows
                  if r.label in PEER_CONFIGS}
    report = {
        **(provenance or {}),
        "model": model, "bits": bits, "target": profile.name, "device_key": key,
        "tracker": str(tracker), "emulated": emulated, "repeat": repeat, "number": number,
        "devices": workers,
        "max_rel_err_vs_fp32": err,
        "top1_agrees_with_fp32": bool(np.array_equal(np.argmax(got, -1), np.argmax(ref, -1))),
        "seconds": time.perf_counter() - t0,
        "rows": [dataclasses.asdict(r) for r in rows],
        "speedup_time": rows[0].median_ms / rows[1].median_ms,
        "size_ratio": rows[0].weight_bytes / rows[1].weight_bytes,
        "threads": 1 if emulated else None,
        "instruction_ratio": (rows[0].minstr / rows[1].minstr) if counted else None,
        "cycle_ratio": (rows[0].mcycles / rows[1].mcycles) if rows[1].mcycles else None,
        "cycle_model": model_of(profile.mcpu) if rows[1].mcycles else None,
        "fastest_int8_peer": ort_int8.fastest(int8_peers) if int8_peers else None,
        "peer_kit": kit,
        "layers": _layers(sites, by, keys) if per_layer else [],
        "strategy": builds[f"DGMS {bits}-bit"].manifest.get("strategy"),
        "sparsity": _sparsity(builds[f"DGMS {bits}-bit"].manifest),
        "tuning": {label: {"logs": b.manifest["tuning"]["logs"],
                           "tuned_kernels": b.manifest["tuning"]["tuned"],
                           "kernels": len(b.manifest["tuning"]["kernels"])}
                   for label, b in builds.items()},
    }
    write_report(report, output)
    return report

def _peer(label, fp32, x, profile, repeat, output) -> dict:
    """onnxruntime FP32 or static int8 on the same emulated core, in the same run (a local
    guest process: it needs no device session)."""
    from ..device import peer

    config = PEER_CONFIGS.get(label)
    model = fp32 if config is None else ort_int8.quantize(fp32, x, config)
    res = peer.run_onnxruntime(model, x, profile, repeat=repeat, workdir=output)
    return dict(res, bytes=len(model))
