"""FP32 vs DGMS on a Cortex-A device from a TVM tracker, side by side from one run.

Both builds go through the same pipeline, kernels and schedules; the FP32 build holds the
same (quantized) weight values in float32, so it is also the reference the DGMS outputs are
checked against. Latency comes from ``time_evaluator`` on the device. On an emulated device
that time is emulation time, not an ARM speed measure: the report says so.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import artifact, pipeline
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


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _time_remote(sess, folder: Path, x: np.ndarray, repeat: int, number: int, counter=None):
    import tvm
    from tvm import relax

    manifest = artifact.read_manifest(folder)
    lib = folder / manifest["library"]
    remote_name = f"{folder.name}-{lib.name}"
    sess.upload(str(lib), remote_name)
    dev = sess.cpu()
    vm = relax.VirtualMachine(sess.load_module(remote_name), dev)
    arg = tvm.runtime.tensor(x, dev)
    out = vm["main"](arg)
    out = (out if isinstance(out, tvm.runtime.Tensor) else out[0]).numpy()
    res = vm.time_evaluator("main", dev, number=number, repeat=repeat)(arg)
    minstr = None
    if counter is not None:
        minstr = 1e-6 * counter.per_call(
            lambda n: lambda: vm.time_evaluator("main", dev, number=n, repeat=1)(arg))
    return out, [1e3 * s for s in res.results], manifest, minstr


def run(model: str, bits: int, target: str, tracker: Tracker, key: str | None,
        output: Path, repeat: int = 5, number: int = 1, seed: int = 0,
        emulated: bool = True, counting: bool = True, peers: bool = True) -> dict:
    """Compile both builds, run them on one device session, write the report files."""
    profile = get_profile(target)
    if not profile.is_arm:
        raise UserError(f"bench runs on a Cortex-A device; {target} is not one "
                        "(use scripts/bench_x86.py for this host)")
    key = key or profile.name
    if not tracker.reachable():
        raise UserError(f"tracker {tracker} is unreachable (start emulated devices with: "
                        f"scripts/device.py start --cpu {profile.name})")
    output.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    loaded = pipeline.load_model(model, bits, seed)  # once, for both builds
    x = loaded.example(seed)
    builds = {"FP32": True, f"DGMS {bits}-bit": False}
    folders = {}
    for i, (label, fp32) in enumerate(builds.items(), 1):
        _log(f"[{i}/4] compiling {label} for {profile.name}")
        folder = output / ("fp32" if fp32 else f"dgms-w{bits}")
        pipeline.compile_model(model, target, folder, bits=bits, fp32=fp32, seed=seed,
                               quiet=True, loaded=loaded)
        check_compatible(artifact.read_manifest(folder), key)
        folders[label] = folder
    _log(f"[3/4] requesting a device under key {key!r} from tracker {tracker}")
    sess = tracker.request(key, timeout=300)
    counter = None
    if emulated and counting:
        from .device.insn import Counter

        counter = Counter(sess, profile, key, output)
    rows, outs = [], {}
    for label, folder in folders.items():
        _log(f"[4/4] timing {label} on the device ({repeat} repeats x {number} calls)")
        try:
            out, ms, manifest, minstr = _time_remote(sess, folder, x, repeat, number, counter)
        except Exception as err:
            raise UserError(f"the run of {label} on device {key!r} failed (did the device "
                            f"crash? see its log): {str(err).splitlines()[0]}") from None
        outs[label] = out
        s = manifest["summary"]
        rows.append(Row(label, float(np.median(ms)), min(ms), max(ms),
                        (folder / manifest["library"]).stat().st_size,
                        s["weight_bytes_codebook"], s["layers_lowered"], minstr))
    ref, got = outs.values()
    err = pipeline.rel_err(got, ref)
    if err > 1e-4:
        raise UserError(f"DGMS outputs differ from the FP32 reference by {err:.2e} relative")
    if emulated and peers:
        rows += _peer_rows(loaded, model, x, profile, repeat, ref, output)
    report = {
        "model": model, "bits": bits, "target": profile.name, "device_key": key,
        "tracker": str(tracker), "emulated": emulated, "repeat": repeat, "number": number,
        "max_rel_err_vs_fp32": err, "seconds": time.perf_counter() - t0,
        "rows": [dataclasses.asdict(r) for r in rows],
        "speedup_time": rows[0].median_ms / rows[1].median_ms,
        "size_ratio": rows[0].weight_bytes / rows[1].weight_bytes,
        "threads": 1 if emulated else None,
        "instruction_ratio": (rows[0].minstr / rows[1].minstr) if counter else None,
    }
    write_report(report, output)
    return report


def _peer_rows(loaded, model, x, profile, repeat, ref, output) -> list[Row]:
    """onnxruntime FP32 and static int8 on the same emulated core, in the same run."""
    from .device import peer

    fp32 = pipeline.onnx_of(loaded, model, x)
    if fp32 is None:
        _log("  (no ONNX form of this model: no onnxruntime peer rows)")
        return []
    rows = []
    for label, onnx_model in (("onnxruntime FP32 (peer)", fp32),
                              ("onnxruntime int8 (peer)", None)):
        _log(f"  peer: {label} on the emulated {profile.name}")
        if onnx_model is None:
            onnx_model = peer.quantize_int8(fp32, x)
        res = peer.run_onnxruntime(onnx_model, x, profile, repeat=repeat, workdir=output)
        if "FP32" in label:
            e = pipeline.rel_err(res["output"], ref)
            if e > 1e-3:
                raise UserError(f"onnxruntime FP32 disagrees with our FP32 build by {e:.1e}")
        ms = res["ms"]
        rows.append(Row(label, float(np.median(ms)), min(ms), max(ms), len(onnx_model),
                        len(onnx_model), 0, res["minstr"]))
    return rows


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
    if rep["instruction_ratio"] is not None:
        lines.append(f"- **instruction-count ratio FP32 / DGMS: "
                     f"{rep['instruction_ratio']:.2f}x** "
                     "(aarch64 instructions per inference, counted inside the device process "
                     "by a TCG plugin: the ARM speed proxy on an emulated device)")
    lines += [f"- time ratio FP32 / DGMS: {rep['speedup_time']:.2f}x; weight size "
              f"ratio {rep['size_ratio']:.2f}x",
              f"- DGMS outputs vs FP32 reference: max relative error "
              f"{rep['max_rel_err_vs_fp32']:.1e}",
              f"- {rep['repeat']} repeats x {rep['number']} calls, batch 1"]
    if rep["emulated"]:
        lines.append("- **Emulated device (QEMU user mode)**: the times are emulation times, "
                     "not ARM speed (QEMU runs FP32 code about 3x slower per instruction than "
                     "integer code, so time ratios are biased): a side column only.")
    return "\n".join(lines) + "\n"


def write_report(rep: dict, output: Path) -> None:
    (output / "report.json").write_text(json.dumps(rep, indent=2) + "\n")
    (output / "report.md").write_text(format_markdown(rep))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["label"] for r in rep["rows"]]
    colors = ["#888888", "#1f77b4", "#e39c4b", "#c0504d"][: len(labels)]
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
