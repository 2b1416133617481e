"""The int8 builds' numbers against the exact build's, side by side in one run on this host:
top-1 agreement and relative error over a set of inputs, with a target's int8 numerics (its
lowering's per-layer choices and weight ranges, built here in the kernels' plain forms:
integer sums are exact, so the numbers are the target's), and onnxruntime's static int8 in
each configuration against the same exact outputs (``scripts/bench_int8.py``,
``scripts/bench_models.py``)."""

from __future__ import annotations

import numpy as np


def builds(imported, bits, target, int8="int8", example=None):
    """exact, int8 with every conv's input quantized at run time, and int8 as compile
    builds it (int8 between layers, calibrated on ``example`` and inputs around it)."""
    from .. import calibration, compiler
    from ..targets import get_profile

    host = get_profile("x86")
    out = {}
    cal = calibration.samples(example)
    for key, strategy, inputs in (("exact", "exact", None), ("int8", int8, None),
                                  ("int8 chained", int8, cal)):
        lowered = compiler.lower(imported, bits, strategy=strategy,
                                 profile=get_profile(target), calibration=inputs)
        out[key] = (compiler.build(lowered, host),
                    sum(r.strategy == "int8" for r in lowered.records),
                    sum(bool(r.output) for r in lowered.records))
    return out


def compare(builds, inputs, labels=None) -> dict:

    from .. import compiler, pipeline

    sides = [s for s in builds if s != "exact"]
    agree, errs = dict.fromkeys(sides, 0), {s: [] for s in sides}
    right = dict.fromkeys(builds, 0)
    for i, x in enumerate(inputs):
        ys = {s: compiler.run_local(b[0], [x])[0] for s, b in builds.items()}
        for s in sides:
            agree[s] += int(np.argmax(ys["exact"]) == np.argmax(ys[s]))
            errs[s].append(pipeline.rel_err(ys[s], ys["exact"]))
        if labels is not None:
            for s in right:
                right[s] += int(np.argmax(ys[s]) == labels[i])
    n = len(inputs)
    row = {"inputs": n, "top1_agreement": agree["int8"] / n,
           "median_rel_err": float(np.median(errs["int8"])),
           "max_rel_err": float(np.max(errs["int8"])), "int8_layers": builds["int8"][1],
           "chained": {"top1_agreement": agree["int8 chained"] / n,
                       "median_rel_err": float(np.median(errs["int8 chained"])),
                       "max_rel_err": float(np.max(errs["int8 chained"])),
                       "int8_outputs": builds["int8 chained"][2]}}
    if labels is not None:
        row.update({f"accuracy_{s}": right[s] / n for s in right})
    return row


def peer_errors(loaded, name, builds, inputs) -> dict:
    """onnxruntime's static int8 in each configuration (calibrated as ours: the example input
    and 7 around it) against our exact build on the same inputs: median / max relative
    error and top-1 agreement."""
    import onnxruntime as ort

    from .. import compiler, pipeline
    from . import ort_int8

    x = loaded.example()
    model = pipeline.onnx_of(loaded, name, x)
    exact = [compiler.run_local(builds["exact"][0], [t])[0] for t in inputs]
    out = {}
    for config in ort_int8.CONFIGS:
        sess = ort.InferenceSession(ort_int8.quantize(model, x, config),
                                    providers=["CPUExecutionProvider"])
        feed = sess.get_inputs()[0].name
        ys = [sess.run(None, {feed: t})[0] for t in inputs]
        errs = [pipeline.rel_err(y, e) for y, e in zip(ys, exact)]
        out[config.name] = {
            "median_rel_err": float(np.median(errs)), "max_rel_err": float(np.max(errs)),
            "top1_agreement": float(np.mean([np.argmax(y) == np.argmax(e)
                                             for y, e in zip(ys, exact)]))}
    return out
