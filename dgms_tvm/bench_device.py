"""FP32 vs DGMS on a Cortex-A device from a TVM tracker, side by side from one run.

Both builds go through the same pipeline, kernels and schedules; the FP32 build holds the
same (quantized) weight values in float32, so it is also the reference the DGMS outputs are
checked against. Latency comes from ``time_evaluator`` on the device. On an emulated device
that time is emulation time, not an ARM speed measure: the report says so.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np

from . import artifact, compiler, ort_int8, pipeline
from .device.client import Tracker, check_compatible
from .errors import UserError
from .targets import get_profile


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


@dataclasses.dataclass
class Job:
    """One unit of device work; the pool hands jobs to whichever device is free."""

    label: str
    kind: str  # "model" | "kernel" | "peer"
    build: str
    path: Path | None = None  # library to upload (model / kernel jobs)
    name: str | None = None  # kernel name (kernel jobs)
    result: dict | None = None


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


SMALL_KERNEL = 2e6  # instructions; the serving process adds a few thousand around any call


class _Device:
    """One session on a device from the tracker, with its uploaded modules cached."""

    def __init__(self, tracker: Tracker, key: str, profile, workdir: Path, counting: bool,
                 timeout: float):
        self.sess = tracker.request(key, timeout=timeout)
        self.dev = self.sess.cpu()
        self.modules: dict[Path, object] = {}
        self.counter = None
        if counting:
            from .device.insn import Counter

            self.counter = Counter(self.sess, profile, key, workdir)

    def close(self) -> None:
        """Give the device back to the tracker now (the session ends when freed)."""
        import gc

        self.modules.clear()
        self.counter = None
        self.sess = self.dev = None
        gc.collect()

    def module(self, path: Path):
        if path not in self.modules:
            remote = f"{path.parent.name}-{path.name}"
            self.sess.upload(str(path), remote)
            self.modules[path] = self.sess.load_module(remote)
        return self.modules[path]

    def measure(self, make_eval, repeat: int, number: int):
        """Times (ms) and, when counting, M instructions per call of one remote function;
        ``make_eval(number, repeat)`` gives its ``time_evaluator``."""
        if self.counter is None:
            res = make_eval(number, repeat)()
            return [1e3 * s for s in res.results], None
        times: list[float] = []

        def factory(n):
            def call():
                times.append(1e3 * make_eval(n, 1)().mean)
            return call

        per_call = self.counter.per_call(factory, 1, 2)
        if per_call < SMALL_KERNEL:  # small: average over more calls, above the RPC noise
            per_call = self.counter.per_call(factory, 1, 1 + min(100, int(
                SMALL_KERNEL / max(per_call, 1e4))))
        return times[-1:], 1e-6 * per_call


def _model_job(job: Job, dev: _Device, x: np.ndarray, repeat: int, number: int) -> dict:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(dev.module(job.path), dev.dev)
    arg = tvm.runtime.tensor(x, dev.dev)
    out = vm["main"](arg)
    out = (out if isinstance(out, tvm.runtime.Tensor) else out[0]).numpy()
    res = vm.time_evaluator("main", dev.dev, number=number, repeat=repeat)(arg)
    ms = [1e3 * s for s in res.results]
    minstr = None
    if dev.counter is not None:
        def make_eval(n, r):
            ev = vm.time_evaluator("main", dev.dev, number=n, repeat=r)
            return lambda: ev(arg)

        _, minstr = dev.measure(make_eval, 1, 1)
    return {"output": out, "ms": ms, "minstr": minstr}


def _kernel_job(job: Job, dev: _Device, func, repeat: int, number: int) -> dict:
    import tvm
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    rng = np.random.default_rng(0)
    args = []
    for info in ArgInfo.from_prim_func(func):
        shape, dtype = [int(d) for d in info.shape], str(info.dtype)
        a = (rng.integers(0, 256, shape).astype(dtype) if "int" in dtype
             else rng.normal(size=shape).astype(dtype))
        args.append(tvm.runtime.tensor(a, dev.dev))
    rmod = dev.module(job.path)

    def make_eval(n, r):
        ev = rmod.time_evaluator(job.name, dev.dev, number=n, repeat=r)
        return lambda: ev(*args)

    ms, minstr = dev.measure(make_eval, repeat, number)
    return {"ms": ms, "minstr": minstr}


def _run_jobs(jobs: list[Job], run_one, tracker: Tracker, key: str, profile, workdir: Path,
              counting: bool, workers: int, timeout: float = 300.0) -> None:
    """Run ``jobs`` on up to ``workers`` devices under ``key`` at once (each worker holds one
    tracker session). A job whose device dies is retried once on a fresh session (the
    supervisor restarts emulated devices); a second failure stops the run with a clear error."""
    from tqdm import tqdm

    todo = queue.Queue()
    for j in jobs:
        todo.put(j)
    failed: list[UserError] = []
    lock = threading.Lock()
    bar = tqdm(total=len(jobs), desc=f"device jobs ({workers} device(s) under {key})",
               file=sys.stderr, leave=False)

    def worker():
        dev = None
        try:
            while not failed:
                try:
                    job = todo.get_nowait()
                except queue.Empty:
                    return
                for attempt in (1, 2):
                    try:
                        if dev is None and job.kind != "peer":
                            dev = _Device(tracker, key, profile, workdir, counting, timeout)
                        job.result = run_one(job, dev)
                        break
                    except UserError as err:
                        failed.append(err)
                        return
                    except Exception as err:  # the device or its session died
                        if dev is not None:
                            dev.close()
                        dev = None
                        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                        if attempt == 2:
                            failed.append(UserError(
                                f"{job.label} failed twice on devices under key {key!r} "
                                f"(the device died? see its log): {first}"))
                            return
                        tqdm.write(f"  {job.label}: device lost ({first[:80]}); retrying "
                                   "once on a fresh device", file=sys.stderr)
                with lock:
                    bar.update(1)
        finally:
            if dev is not None:
                dev.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    bar.close()
    if failed:
        raise failed[0]


def device_count(tracker: Tracker, key: str) -> int:
    """Devices free under ``key`` now (at least 1: a busy farm is waited for)."""
    return max(1, tracker.free(key))


def check_args(model: str, bits: int, target: str, output: Path, repeat: int = 5,
               number: int = 1, emulated: bool = True):
    """Refuse bad arguments before anything starts (devices take a minute to come up).
    Returns the target profile."""
    from .format import FormatError, check_bits

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
        tuning_logs: Path | None = None, strategy: str = "auto") -> dict:
    """Compile both builds, run them (and their kernels one by one) on every free device
    under the key, write the report files."""
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
    builds, folders, sites, funcs, jobs = {}, {}, {}, {}, []
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

    def run_one(job: Job, dev: _Device | None) -> dict:
        if job.kind == "model":
            return _model_job(job, dev, x, repeat, number)
        if job.kind == "kernel":
            return _kernel_job(job, dev, funcs[(job.build, job.name)], repeat, number)
        return _peer(job.label, onnx_fp32, x, profile, repeat, output)

    _run_jobs(jobs, run_one, tracker, key, profile, output, emulated and counting, workers)
    by = {(j.kind, j.build, j.name): j.result for j in jobs}
    rows, outs = [], {}
    for label, b in builds.items():
        res = by[("model", label, None)]
        outs[label] = res["output"]
        s = b.manifest["summary"]
        rows.append(Row(label, float(np.median(res["ms"])), min(res["ms"]), max(res["ms"]),
                        (folders[label] / b.manifest["library"]).stat().st_size,
                        s["weight_bytes_codebook"], s["layers_lowered"], res["minstr"]))
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
                        res["bytes"], 0, res["minstr"]))
    counted = rows[0].minstr is not None
    int8_peers = {r.label: (r.minstr if counted else r.median_ms) for r in rows
                  if r.label in PEER_CONFIGS}
    report = {
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
        "fastest_int8_peer": ort_int8.fastest(int8_peers) if int8_peers else None,
        "peer_kit": kit,
        "layers": _layers(sites, by, builds) if per_layer else [],
        "strategy": builds[f"DGMS {bits}-bit"].manifest.get("strategy"),
        "sparsity": _sparsity(builds[f"DGMS {bits}-bit"].manifest),
        "tuning": {label: {"logs": b.manifest["tuning"]["logs"],
                           "tuned_kernels": b.manifest["tuning"]["tuned"],
                           "kernels": len(b.manifest["tuning"]["kernels"])}
                   for label, b in builds.items()},
    }
    write_report(report, output)
    return report


#: onnxruntime FP32 and its int8 in each documented configuration (``ort_int8``).
PEER_CONFIGS = {f"onnxruntime int8 {c.name} (peer)": c for c in ort_int8.CONFIGS}
PEERS = ("onnxruntime FP32 (peer)", *PEER_CONFIGS)


def _peer(label, fp32, x, profile, repeat, output) -> dict:
    """onnxruntime FP32 or static int8 on the same emulated core, in the same run (a local
    guest process: it needs no device session)."""
    from .device import peer

    config = PEER_CONFIGS.get(label)
    model = fp32 if config is None else ort_int8.quantize(fp32, x, config)
    res = peer.run_onnxruntime(model, x, profile, repeat=repeat, workdir=output)
    return dict(res, bytes=len(model))


def _layers(sites: dict, by: dict, builds: dict) -> list[dict]:
    """Per call site of ``main``: each build's kernel and its time / instructions per call.
    An int8 layer's input quantization and weight decode (kernels of their own, just before
    it) count in that layer's row. The builds come from the same graph: with as many sites
    they pair by position; otherwise (int8 convs doing the BatchNorm / add / relu after them)
    each site of the first build pairs with the next unpaired one of the second that runs the
    same layer (convs by their shape, other kernels by name), and a site with none is done in
    a conv's epilogue there."""
    labels = list(sites)
    first, second = (_group(sites[lb]) for lb in labels)
    if len(first) == len(second):
        return [{"index": i, labels[0]: _entry(a, labels[0], by),
                 labels[1]: _entry(b, labels[1], by)}
                for i, (a, b) in enumerate(zip(first, second, strict=True))]
    used, rows = [False] * len(second), []
    for a in first:
        ea = _entry(a, labels[0], by)
        j = next((j for j, b in enumerate(second) if not used[j] and _key(b) == _key(a)), None)
        if j is None:
            eb = {"kernel": "(in a conv's epilogue)", "median_ms": 0.0,
                  "minstr": None if ea["minstr"] is None else 0.0}
        else:
            used[j] = True
            eb = _entry(second[j], labels[1], by)
        rows.append({labels[0]: ea, labels[1]: eb})
    for j in (j for j, u in enumerate(used) if not u):  # in the second build only
        eb = _entry(second[j], labels[1], by)
        rows.append({labels[0]: {"kernel": "-", "median_ms": 0.0,
                                 "minstr": None if eb["minstr"] is None else 0.0},
                     labels[1]: eb})
    return [{"index": i, **r} for i, r in enumerate(rows)]


#: The shape part of a conv kernel's name: the same layer in any build / strategy.
_CONV_SHAPE = re.compile(r"conv2d(_n\d+_c\d+_h\d+_w\d+_o\d+_k\d+x\d+_s\d+x\d+_p[\dx]+"
                         r"_d\d+x\d+_g\d+)")


def _key(group: list[str]) -> str:
    m = _CONV_SHAPE.search(group[-1])
    return "conv2d" + m.group(1) if m else group[-1]


def _sparsity(manifest: dict) -> dict | None:
    """Share of exact zeros (DGMS's pinned component) over the codebook layers' weights, and
    per layer."""
    layers = [r for r in manifest["layers"] if r.get("sparsity") is not None and r["lowered"]]
    if not layers:
        return None
    sizes = [int(np.prod(r["shape"])) for r in layers]
    zeros = sum(r["sparsity"] * n for r, n in zip(layers, sizes, strict=True))
    return {"overall": zeros / sum(sizes),
            "layers": {r["name"]: r["sparsity"] for r in layers},
            "zero_inputs": sum(r.get("zero_inputs", 0) for r in layers)}


def _group(names: list[str]) -> list[list[str]]:
    """Call sites as layers: an int8 layer's quantize and decode kernels join the site
    after them."""
    from .kernels.int8 import DECODE_FAMILY, QUANT_FAMILY

    out, pending = [], []
    for name in names:
        pending.append(name)
        if not name.startswith((QUANT_FAMILY, DECODE_FAMILY)):
            out.append(pending)
            pending = []
    return out + ([pending] if pending else [])


def _entry(names: list[str], label: str, by: dict) -> dict:
    parts = [_strip(by[("kernel", label, nm)]) for nm in names]
    mi = [p["minstr"] for p in parts]
    out = {"kernel": " + ".join(names), "median_ms": sum(p["median_ms"] for p in parts),
           "minstr": None if None in mi else sum(mi)}
    if len(parts) > 1:  # an int8 layer: what its quantize / decode / conv kernels take each
        out["parts"] = [{"kernel": nm, **p} for nm, p in zip(names, parts, strict=True)]
    return out


def _strip(res: dict) -> dict:
    ms = res["ms"]
    return {"median_ms": float(np.median(ms)), "minstr": res["minstr"]}


def format_markdown(rep: dict) -> str:
    lines = [f"# {rep['model']} {rep['bits']}-bit vs FP32 on {rep['target']} "
             f"(device key `{rep['device_key']}`, tracker {rep['tracker']})", "",
             "| build | M instructions | median ms | min ms | max ms | weights MiB | "
             "library MiB | lowered |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rep["rows"]:
        mi = "-" if r["minstr"] is None else f"{r['minstr']:.1f}"
        lines.append(f"| {r['label']} | {mi} | {r['median_ms']:.2f} | {r['min_ms']:.2f} | "
                     f"{r['max_ms']:.2f} | {r['weight_bytes'] / 2**20:.2f} | "
                     f"{r['library_bytes'] / 2**20:.2f} | {r['lowered']} |")
    lines.append("")
    peers = [r for r in rep["rows"][2:] if r["minstr"]]
    if peers and rep["rows"][1]["minstr"]:
        dgms = rep["rows"][1]["minstr"]
        lines.append("- peer rows: " + "; ".join(
            f"{r['label']} / DGMS instructions = {r['minstr'] / dgms:.2f}x" for r in peers))
        int8 = {r["label"]: r["minstr"] for r in peers if r["label"] in PEER_CONFIGS}
        if int8:
            best = ort_int8.fastest(int8)
            lines.append(f"- **fastest onnxruntime int8 configuration on this core: "
                         f"{PEER_CONFIGS[best].name}; its instructions / DGMS = "
                         f"{int8[best] / dgms:.2f}x** (the goal is at least 1x)")
    if rep["instruction_ratio"] is not None:
        lines.append(f"- **instruction-count ratio FP32 / DGMS: "
                     f"{rep['instruction_ratio']:.2f}x** "
                     "(aarch64 instructions per inference, counted inside the device process "
                     "by a TCG plugin: the ARM speed proxy on an emulated device)")
    lines += [f"- time ratio FP32 / DGMS: {rep['speedup_time']:.2f}x; weight size "
              f"ratio {rep['size_ratio']:.2f}x",
              f"- DGMS outputs vs FP32 reference: max relative error "
              f"{rep['max_rel_err_vs_fp32']:.1e}; top-1 "
              f"{'agrees' if rep.get('top1_agrees_with_fp32') else 'DIFFERS'}",
              f"- {rep['repeat']} repeats x {rep['number']} calls, batch 1"]
    if rep.get("sparsity"):
        sp = rep["sparsity"]["layers"].values()
        lines.append(f"- DGMS weight sparsity (exact zeros): {rep['sparsity']['overall']:.1%} "
                     f"over the codebook layers (per layer {min(sp):.1%} to {max(sp):.1%}; "
                     "report.json lists each); zero skipping dropped "
                     f"{rep['sparsity'].get('zero_inputs', 0)} all-zero input channels "
                     "(the rest of the zeros are scattered)")
    if rep.get("strategy"):
        st = rep["strategy"]
        lines.append(f"- DGMS strategy {st['requested']} -> {st['resolved']} ("
                     + ", ".join(f"{n} conv layers {k}" for k, n in st["layers"].items() if n)
                     + ")")
    for label, t in (rep.get("tuning") or {}).items():
        lines.append(f"- {label}: " + (f"{t['tuned_kernels']} of {t['kernels']} kernels from "
                                        f"tuning logs {t['logs']}" if t["logs"] else
                                        "hand schedules (no tuning logs for this target)"))
    lines.append(f"- run on {rep.get('devices', 1)} device(s) under the key at once "
                 f"({rep['seconds']:.0f} s in all, compile included)")
    if rep.get("peer_kit"):
        lines.append(f"- onnxruntime peers: not run through the tracker (onnxruntime is no TVM "
                     f"module). To time them on the board, copy `{rep['peer_kit']}/` there and "
                     "run `python3 time_peers.py` (with `pip install onnxruntime`): FP32 and "
                     "its int8 in each documented configuration, on this bench's input.")
    if rep["emulated"]:
        lines.append("- **Emulated device (QEMU user mode)**: the times are emulation times, "
                     "not ARM speed (QEMU runs FP32 code about 3x slower per instruction than "
                     "integer code, so time ratios are biased): a side column only.")
    lines += _layer_lines(rep)
    return "\n".join(lines) + "\n"


def _layer_lines(rep: dict) -> list[str]:
    layers = rep.get("layers") or []
    if not layers:
        return []
    labels = [r["label"] for r in rep["rows"][:2]]
    if not all(lb in layers[0] for lb in labels):
        return []
    counted = layers[0][labels[0]]["minstr"] is not None
    unit = "M instr" if counted else "ms"
    key = "minstr" if counted else "median_ms"
    lines = ["", f"## Per layer: every kernel call of `main`, run alone on the device "
             f"({'instructions per call' if counted else 'median time per call'})", "",
             f"| # | {labels[0]} kernel | {labels[1]} kernel | {labels[0]} {unit} | "
             f"{labels[1]} {unit} | {labels[0]} / {labels[1]} |", "|---|---|---|---|---|---|"]
    tot = [0.0, 0.0]
    for layer in layers:
        a, b = layer[labels[0]], layer[labels[1]]
        tot[0] += a[key]
        tot[1] += b[key]
        ratio = f"{a[key] / b[key]:.2f}x" if a[key] and b[key] else "-"
        lines.append(f"| {layer['index']} | `{a['kernel']}` | `{b['kernel']}` | "
                     f"{_cell(a, key)} | {_cell(b, key)} | {ratio} |")
    whole = [rep["rows"][i]["minstr" if counted else "median_ms"] for i in (0, 1)]
    lines.append(f"| sum | | | {tot[0]:.2f} | {tot[1]:.2f} | {tot[0] / tot[1]:.2f}x |")
    lines += ["", f"- the kernels run alone add up to {tot[0] / whole[0]:.0%} ({labels[0]}) "
              f"and {tot[1] / whole[1]:.0%} ({labels[1]}) of the whole-model figure; the rest "
              "is the VM, allocation and the call overhead"]
    return lines


def _cell(entry: dict, key: str) -> str:
    """A layer's figure; an int8 layer's split over its kernels after it, in order."""
    if "parts" not in entry:
        return f"{entry[key]:.3f}"
    return f"{entry[key]:.3f} ({' + '.join(f'{p[key]:.3f}' for p in entry['parts'])})"


def write_report(rep: dict, output: Path) -> None:
    (output / "report.json").write_text(json.dumps(rep, indent=2) + "\n")
    (output / "report.md").write_text(format_markdown(rep))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["label"] for r in rep["rows"]]
    colors = (["#888888", "#1f77b4", "#e39c4b"] + ["#c0504d"] * len(labels))[: len(labels)]
    layers = rep.get("layers") or []
    pair = all(lb in layers[0] for lb in labels[:2]) if layers else False
    if pair:
        fig, (ax, lax) = plt.subplots(2, 1, figsize=(9, 0.7 * len(labels) + 5.6),
                                      gridspec_kw={"height_ratios": [1, 1.6]})
        key = "minstr" if layers[0][labels[0]]["minstr"] is not None else "median_ms"
        idx = np.arange(len(layers))
        for k, lb in enumerate(labels[:2]):
            lax.bar(idx + (k - 0.5) * 0.4, [layer[lb][key] for layer in layers], 0.4,
                    label=lb, color=colors[k])
        lax.set_xlabel("kernel call in execution order (#)")
        lax.set_ylabel("M instructions per call" if key == "minstr" else "ms per call")
        lax.legend(fontsize=8)
        lax.set_title("per layer", fontsize=9)
    else:
        fig, ax = plt.subplots(figsize=(7, 0.7 * len(labels) + 1.6))
    if rep["instruction_ratio"]:
        ax.barh(labels, [r["minstr"] for r in rep["rows"]], color=colors)
        ax.set_xlabel("M aarch64 instructions per inference (emulated core, one thread)")
    else:
        med = np.array([r["median_ms"] for r in rep["rows"]])
        lo = med - np.array([r["min_ms"] for r in rep["rows"]])
        hi = np.array([r["max_ms"] for r in rep["rows"]]) - med
        ax.barh(labels, med, xerr=[lo, hi], color=colors, capsize=4)
        ax.set_xlabel("latency per inference, ms (median, min-max)")
    ratio = (f"instructions FP32 / DGMS = {rep['instruction_ratio']:.2f}x"
             if rep["instruction_ratio"] else f"time FP32 / DGMS = {rep['speedup_time']:.2f}x")
    ax.set_title(f"{rep['model']} on {rep['target']}: {ratio}", fontsize=10)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(output / "report.png", dpi=120)
    plt.close(fig)
