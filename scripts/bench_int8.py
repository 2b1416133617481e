#!/usr/bin/env python3
"""Accuracy of the int8 strategy against the exact one, side by side in one run: top-1
agreement and output difference on seeded random inputs of a built-in model, and on the
digits test set for a digitnet trained and DGMS-quantized here. Both builds run on this host:
``--target`` picks whose int8 numerics (the lowering's per-layer choices and weight ranges,
e.g. cortex-a72's widening kernel with 7-bit weights and FP32 stem), built here in the
kernels' plain vector forms (integer sums are exact, so the numbers are the target's).

The int8 side is shown twice: with every int8 conv's input quantized at run time, and as
compile builds it (int8 between layers, calibrated on the example input and 7 around it).
onnxruntime's static int8 (each configuration, calibrated on the same inputs) is measured
against the same exact outputs beside it (``--no-peers`` skips it).

Goals: top-1 agreement of at least 99 % (issue "Fast codebook kernels"); the error against
exact at most 1.2x onnxruntime int8's (issue #19)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dgms_tvm.cli import one_line_errors, run_script

GOAL = 0.99
#: Issue #19: the int8 error against exact no worse than 1.2x onnxruntime int8's.
PEER_GOAL = 1.2


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", nargs="+", default=["resnet18", "mobilenetv2"],
                   help="built-in models for the random-input rows")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--inputs", type=int, default=256, help="random inputs per model")
    p.add_argument("--no-digits", action="store_true", help="skip the trained digitnet row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", default="x86",
                   help="the target whose int8 lowering is measured (built for this host)")
    p.add_argument("--strategy", default="int8", choices=["int8", "int8-full"],
                   help="the int8 side: int8 (each core's fastest), or int8-full (8-bit weights "
                        "where that core's fastest keeps 7: cortex-a53 / a72)")
    p.add_argument("--no-peers", action="store_true",
                   help="skip onnxruntime int8's error on the same inputs")
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


def _builds(imported, bits, target, int8="int8", example=None):
    """exact, int8 with every conv's input quantized at run time, and int8 as compile
    builds it (int8 between layers, calibrated on ``example`` and inputs around it)."""
    from dgms_tvm import calibration, compiler
    from dgms_tvm.targets import get_profile

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


def _compare(builds, inputs, labels=None) -> dict:
    import numpy as np

    from dgms_tvm import compiler, pipeline

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


def _peer_errors(loaded, name, builds, inputs) -> dict:
    """onnxruntime's static int8 in each configuration (calibrated as ours: the example input
    and 7 around it) against our exact build on the same inputs: median / max relative
    error and top-1 agreement."""
    import numpy as np
    import onnxruntime as ort

    from dgms_tvm import compiler, pipeline
    from dgms_tvm.bench import ort_int8

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


def _random_rows(models, bits, count, seed, target, int8, peers=True):
    import numpy as np

    from dgms_tvm import pipeline

    for name in models:
        loaded = pipeline.load_model(name, bits, seed)
        _, shape, dtype = loaded.imported.inputs[0]
        rng = np.random.default_rng(seed)
        inputs = [rng.normal(size=shape).astype(dtype) for _ in range(count)]
        builds = _builds(loaded.imported, bits, target, int8, loaded.example())
        row = {"model": name, "data": f"{count} random normal inputs",
               **_compare(builds, inputs)}
        if peers:
            row["onnxruntime_int8"] = _peer_errors(loaded, name, builds, inputs)
        yield row


def _digits_row(bits, seed, target, int8):
    import numpy as np
    import torch

    from dgms_tvm import frontend
    from dgms_tvm.quant import recipe

    name, entry = recipe.digits_model("digitnet")
    data = recipe.load_data("digits", entry, seed)
    fp32 = recipe.pretrain(name, data, 15, seed, quiet=True)
    res = recipe.quantize(fp32, data, bits, 6, seed, quiet=True)
    model = res.exported.model.eval()
    x0 = data.x_test[:1]
    declared = {k: cw.bits for k, cw in res.exported.layers.items()}
    imported = frontend.from_torch(model, (x0,), declared)
    inputs = [data.x_test[i:i + 1].numpy().astype(np.float32) for i in range(len(data.x_test))]
    labels = data.y_test.numpy()
    with torch.no_grad():
        torch_acc = float((model(data.x_test).argmax(1) == data.y_test).float().mean())
    return {"model": "digitnet (trained, DGMS)", "data": f"digits test set ({len(inputs)})",
            "accuracy_torch": torch_acc,
            **_compare(_builds(imported, bits, target, int8, inputs[0]), inputs, labels)}


@one_line_errors
def main(argv=None):
    args = parse(argv)
    t0 = time.perf_counter()
    from dgms_tvm.targets import get_profile

    get_profile(args.target)  # an unknown target fails before the work
    rows = list(_random_rows(args.model, args.bits, args.inputs, args.seed, args.target,
                             args.strategy, not args.no_peers))
    if not args.no_digits:
        rows.append(_digits_row(args.bits, args.seed, args.target, args.strategy))
    print(f"{args.strategy} (lowered for {args.target}) vs exact strategy, {args.bits}-bit, "
          f"on this host ({time.perf_counter() - t0:.0f} s; relative error = "
          "max|int8 - exact| / max|exact| per input)")
    print(f"{'model':<26}{'data':<28}{'int8 layers':>12}{'top-1 agree':>13}{'median err':>12}"
          f"{'max err':>9}  accuracy exact / int8   goal >= 99 %")
    for r in rows:
        acc = (f"{r['accuracy_exact']:.2%} / {r['accuracy_int8']:.2%}"
               if "accuracy_exact" in r else "-")
        print(f"{r['model']:<26}{r['data']:<28}{r['int8_layers']:>12}"
              f"{r['top1_agreement']:>13.2%}{r['median_rel_err']:>12.2e}{r['max_rel_err']:>9.2e}"
              f"  {acc:<22} {'met' if r['top1_agreement'] >= GOAL else 'MISSED'}")
    print("\nint8 between layers (compile's build: layers writing the next int8 conv's input at "
          "a scale calibrated on the example input and 7 around it), same inputs:")
    print(f"{'model':<26}{'int8 outputs':>13}{'top-1 agree':>13}{'median err':>12}"
          f"{'max err':>9}  accuracy int8 chained   goal >= 99 %")
    for r in rows:
        c = r["chained"]
        acc = f"{r['accuracy_int8 chained']:.2%}" if "accuracy_exact" in r else "-"
        print(f"{r['model']:<26}{c['int8_outputs']:>13}{c['top1_agreement']:>13.2%}"
              f"{c['median_rel_err']:>12.2e}{c['max_rel_err']:>9.2e}  {acc:<22} "
              f"{'met' if c['top1_agreement'] >= GOAL else 'MISSED'}")
    peers = [r for r in rows if "onnxruntime_int8" in r]
    if peers:
        print(f"\nonnxruntime static int8 (this host's onnxruntime; calibrated on the same inputs "
              f"as ours) against our exact build, same inputs; goal: our chained int8 error "
              f"at most {PEER_GOAL}x the configuration's with the least")
        print(f"{'model':<26}{'configuration':<18}{'top-1 agree':>13}{'median err':>12}"
              f"{'max err':>9}")
        for r in peers:
            for cfg, e in r["onnxruntime_int8"].items():
                print(f"{r['model']:<26}{cfg:<18}{e['top1_agreement']:>13.2%}"
                      f"{e['median_rel_err']:>12.2e}{e['max_rel_err']:>9.2e}")
            best = min(e["median_rel_err"] for e in r["onnxruntime_int8"].values())
            ratio = r["chained"]["median_rel_err"] / best
            print(f"{r['model']:<26}ours / least median error: {ratio:.2f}x "
                  f"({'met' if ratio <= PEER_GOAL else 'MISSED'})")
    if args.json:
        args.json.write_text(json.dumps({"bits": args.bits, "target": args.target,
                                         "strategy": args.strategy,
                                         "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(run_script(main))
