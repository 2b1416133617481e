#!/usr/bin/env python3
"""onnxruntime FP32 and its int8 in each documented configuration (U8S8 / S8S8 activations,
QDQ / QOperator), side by side in one run, on this host (time) or on an emulated Cortex-A
core (aarch64 instructions per inference): which one the benchmarks hold ours against."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dgms_tvm.cli import one_line_errors, run_script


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="resnet18", help="built-in model or .onnx file")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--target", default="x86", help="x86 (this host, timed) or an ARM core "
                   "(emulated here, instructions counted)")
    p.add_argument("--repeat", type=int, default=10, help="timed repeats on x86")
    p.add_argument("--number", type=int, default=5, help="calls per repeat on x86")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    from dgms_tvm.targets import get_profile

    args.profile = get_profile(args.target)  # a bad name fails here, before any work
    if args.repeat < 1 or args.number < 1:
        p.error("--repeat and --number must be at least 1")
    return args


@one_line_errors
def main(argv=None):
    args = parse(argv)
    import numpy as np

    from dgms_tvm import pipeline
    from dgms_tvm.bench import ort_int8
    from dgms_tvm.errors import UserError

    loaded = pipeline.load_model(args.model, args.bits, 0)
    x = loaded.example(0)
    fp32 = pipeline.onnx_of(loaded, args.model, x)
    if fp32 is None:
        raise UserError(f"{args.model} has no ONNX form (give a built-in model or an .onnx file)")
    models = {"FP32": fp32}
    for c in ort_int8.CONFIGS:
        print(f"quantizing {c.name}", file=sys.stderr, flush=True)
        models[f"int8 {c.name}"] = ort_int8.quantize(fp32, x, c)
    arm = args.profile.is_arm
    rows, ref = {}, None
    for label, blob in models.items():
        print(f"running onnxruntime {label}", file=sys.stderr, flush=True)
        if arm:
            from dgms_tvm.device.peer import run_onnxruntime

            res = run_onnxruntime(blob, x, args.profile, repeat=1)
            cost, out = res["minstr"], res["output"]
        else:
            from dgms_tvm.bench.on_host import time_onnxruntime

            cost = 1e3 * float(np.median(time_onnxruntime(blob, x, args.repeat, args.number)))
            import onnxruntime as ort

            sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
            out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        ref = out if ref is None else ref
        rows[label] = {"cost": cost, "rel_err_vs_fp32": pipeline.rel_err(out, ref),
                       "top1_agrees": bool(np.argmax(out) == np.argmax(ref))}
    unit = "M instructions" if arm else "median ms"
    best = ort_int8.fastest({k: r["cost"] for k, r in rows.items() if k != "FP32"})
    print(f"onnxruntime on {args.profile.description}, {args.model} ({args.bits}-bit "
          f"weights), batch 1" + (", one thread" if arm else ""))
    print(f"{'configuration':<20} {unit:>15} {'rel err vs FP32':>16} {'top-1':>6}")
    for label, r in rows.items():
        print(f"{label:<20} {r['cost']:>15.2f} {r['rel_err_vs_fp32']:>16.1e} "
              f"{'same' if r['top1_agrees'] else 'DIFF':>6}")
    speedup = rows["FP32"]["cost"] / rows[best]["cost"]
    print(f"fastest int8 configuration: {best[5:]} ({speedup:.2f}x FP32)")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "bits": args.bits,
                                         "target": args.profile.name, "unit": unit,
                                         "rows": rows, "fastest": best}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(run_script(main))
