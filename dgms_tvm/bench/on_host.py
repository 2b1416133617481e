"""Host benchmark: the FP32 build and the codebook build of one model, timed side by side in
one run with the same pipeline and schedules (``scripts/bench_x86.py``)."""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import tvm
from tvm import relax

from .. import calibration, compiler
from ..pipeline import load_model, onnx_of, rel_err
from ..targets import get_profile


def time_vm(executable, inputs, repeat: int, number: int) -> list[float]:
    """Per-call seconds of ``main``, one figure per repeat (``time_evaluator``).

    A build slower than 0.5 s per call gets 3 repeats of 1 call, so that an untuned baseline
    does not hold the benchmark for minutes.
    """
    vm = relax.VirtualMachine(executable, tvm.cpu())
    args = [tvm.runtime.tensor(a) for a in inputs]
    t0 = time.perf_counter()
    vm["main"](*args)  # warm-up
    if time.perf_counter() - t0 > 0.5:
        repeat, number = min(repeat, 3), 1
    res = vm.time_evaluator("main", tvm.cpu(), number=number, repeat=repeat)(*args)
    return list(res.results)


def time_onnxruntime(onnx_model: bytes, x: np.ndarray, repeat: int, number: int) -> list[float]:
    """Per-call seconds of onnxruntime (CPU, all cores, full graph optimisation)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # not a warning per unused QOperator constant
    sess = ort.InferenceSession(onnx_model, opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    sess.run(None, feed)
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            sess.run(None, feed)
        out.append((time.perf_counter() - t0) / number)
    return out


PEER_INT8 = "onnxruntime int8"


def fastest_int8_peer(rows: dict) -> str | None:
    """The label of the fastest onnxruntime int8 configuration among ``rows``."""
    from . import ort_int8

    ms = {k: r["median_ms"] for k, r in rows.items() if k.startswith(PEER_INT8)}
    return ort_int8.fastest(ms) if ms else None


def compare(model: str, bits: int, repeat: int = 10, number: int = 5, seed: int = 0,
            tuning_logs=None, per_layer: bool = False) -> dict:
    """Build FP32 and codebook variants for this host (hand schedules, and tuned ones when
    ``tuning_logs`` holds a database for this host's target), check they agree, time them
    all. ``per_layer``: the codebook int8 build's layers beside the fastest onnxruntime int8
    configuration's (:mod:`.host_layers`)."""
    from ..schedules import tuning_db

    profile = get_profile("x86")
    loaded = load_model(model, bits, seed)
    x = loaded.example(seed)
    rows, outs, prepared, blobs, names = {}, {}, {}, {}, {}
    db, folder = tuning_db.load(tuning_logs, profile.name,
                                log=lambda m: print(m, file=sys.stderr))
    variants = [("fp32 TVM default", False, False, None, "exact"),
                ("fp32 same kernels", False, True, None, "exact"),
                (f"codebook {bits}-bit", True, True, None, "exact"),
                (f"codebook {bits}-bit int8", True, True, None, "int8")]
    if db is not None:
        variants += [("fp32 tuned", False, True, db, "exact"),
                     (f"codebook {bits}-bit tuned", True, True, db, "exact"),
                     # the int8 kernels have no records, the kernels around them do
                     (f"codebook {bits}-bit int8 tuned", True, True, db, "int8")]
    cal = calibration.samples(x)  # int8 between layers, calibrated as compile does
    for label, cb, fp32_kernels, database, strategy in variants:
        t0 = time.perf_counter()
        lowered = compiler.lower(loaded.imported, bits, codebooks=cb, fp32_kernels=fp32_kernels,
                                 strategy=strategy, profile=profile,
                                 calibration=cal)
        names[label] = {k: r.name for r in lowered.records
                        for k in (r.kernel, r.fp32_kernel) if k}
        applied: dict = {}
        prepared[label] = compiler.prepare(lowered, profile, database=database,
                                           applied=applied)
        exe = tvm.compile(prepared[label], target=profile.tvm_target())
        build_s = time.perf_counter() - t0
        print(f"  built {label} in {build_s:.1f} s; timing", file=sys.stderr, flush=True)
        outs[label] = compiler.run_local(exe, [x])[0]
        secs = time_vm(exe, [x], repeat, number)
        rows[label] = {"median_ms": 1e3 * float(np.median(secs)),
                       "min_ms": 1e3 * min(secs), "max_ms": 1e3 * max(secs),
                       "build_s": build_s,
                       "lowered": sum(r.lowered for r in lowered.records),
                       "tuned_kernels": sum(v == "tuned" for v in applied.values())}
    onnx_model = onnx_of(loaded, model, x)
    if onnx_model is not None:
        from . import ort_int8

        peers = [("onnxruntime fp32", onnx_model)]
        for config in ort_int8.CONFIGS:
            print(f"  quantizing the onnxruntime int8 peer, {config.name}", file=sys.stderr,
                  flush=True)
            peers.append((f"{PEER_INT8} {config.name}", ort_int8.quantize(onnx_model, x, config)))
        for label, blob in peers:
            blobs[label] = blob
            secs = time_onnxruntime(blob, x, repeat, number)
            rows[label] = {"median_ms": 1e3 * float(np.median(secs)),
                           "min_ms": 1e3 * min(secs), "max_ms": 1e3 * max(secs),
                           "build_s": 0.0, "lowered": 0, "tuned_kernels": 0}
    exact = {k: v for k, v in outs.items() if "int8" not in k}
    a, *others = exact.values()
    err = max(rel_err(b, a) for b in others)
    int8_err = rel_err(outs[f"codebook {bits}-bit int8"], outs[f"codebook {bits}-bit"])
    top1 = bool(np.argmax(outs[f"codebook {bits}-bit int8"]) ==
                np.argmax(outs[f"codebook {bits}-bit"]))
    layers = None
    if per_layer and blobs:
        from ..measure import host
        from . import host_layers

        ours = f"codebook {bits}-bit int8" + (" tuned" if db is not None else "")
        peer = fastest_int8_peer(rows)
        print(f"  per layer: {ours} vs {peer}", file=sys.stderr, flush=True)
        layers = {"ours": ours, "peer": peer, **host_layers.pair(
            host.layers(prepared[ours], profile, repeat, number, names[ours]),
            host_layers.onnxruntime(blobs[peer], x, repeat * number))}
    return {"model": model, "bits": bits, "target": profile.description, "rows": rows,
            "layers": layers,
            "threads": os.environ.get("TVM_NUM_THREADS"),
            "max_rel_err_between_builds": err, "int8_rel_err_vs_exact": int8_err,
            "int8_top1_agrees": top1, "tuning_logs": str(folder) if db else None}


def format_report(rep: dict) -> str:
    lines = [f"{rep['model']} {rep['bits']}-bit on {rep['target']}, batch 1, "
             f"{rep.get('threads')} TVM threads (max rel err between exact builds "
             f"{rep['max_rel_err_between_builds']:.1e}; int8 vs exact "
             f"{rep['int8_rel_err_vs_exact']:.1e}, top-1 "
             f"{'agrees' if rep['int8_top1_agrees'] else 'DIFFERS'})",
             f"{'build':<32} {'median ms':>10} {'min ms':>9} {'max ms':>9} {'lowered':>8} "
             f"{'tuned':>6}"]
    for label, r in rep["rows"].items():
        lines.append(f"{label:<32} {r['median_ms']:>10.2f} {r['min_ms']:>9.2f} "
                     f"{r['max_ms']:>9.2f} {r['lowered']:>8} {r['tuned_kernels']:>6}")
    ms = {k: r["median_ms"] for k, r in rep["rows"].items()}
    tvm_default, same, cbk = list(ms.values())[:3]
    lines.append(f"codebook speedup: {same / cbk:.2f}x over FP32 with the same kernels and "
                 f"schedules, {tvm_default / cbk:.2f}x over TVM's default FP32 lowering")
    q8 = ms[f"codebook {rep['bits']}-bit int8"]
    best = fastest_int8_peer(rep["rows"])
    if "onnxruntime fp32" in ms:
        lines.append(f"onnxruntime FP32 / codebook build time ratio: "
                     f"{ms['onnxruntime fp32'] / cbk:.2f}x (exact), "
                     f"{ms['onnxruntime fp32'] / q8:.2f}x (int8; goal at least 3x)")
        lines.append(f"fastest onnxruntime int8 configuration here: {best[len(PEER_INT8) + 1:]}; "
                     f"it / codebook int8 time ratio: {ms[best] / q8:.2f}x (goal at least 1x)")
    if "fp32 tuned" in ms:
        tuned_cb = ms[f"codebook {rep['bits']}-bit tuned"]
        lines.append(f"tuned vs hand: FP32 {same / ms['fp32 tuned']:.2f}x, codebook "
                     f"{cbk / tuned_cb:.2f}x faster (logs {rep['tuning_logs']})")
        tq8 = ms[f"codebook {rep['bits']}-bit int8 tuned"]
        if "onnxruntime fp32" in ms:
            ort, ort8 = ms["onnxruntime fp32"], ms[best]
            lines.append(f"tuned: onnxruntime FP32 / codebook int8 {ort / tq8:.2f}x (goal at "
                         f"least 3x), fastest onnxruntime int8 / codebook int8 {ort8 / tq8:.2f}x "
                         f"(goal at least 1x), codebook exact vs tuned TVM FP32 "
                         f"{ms['fp32 tuned'] / tuned_cb:.2f}x (goal at least 1x)")
            lines.append(f"tuned TVM FP32 / onnxruntime FP32 time: "
                         f"{ms['fp32 tuned'] / ms['onnxruntime fp32']:.2f}x (goal: at most 1.5x)")
    if rep.get("layers"):
        from .host_layers import format_lines

        lines += format_lines(rep["layers"], rep["layers"]["ours"], rep["layers"]["peer"])
    return "\n".join(lines)
