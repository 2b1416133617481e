#!/usr/bin/env python3
"""DGMS accuracy on real data: train a small CNN on scikit-learn's digits in FP32, then
DGMS-fine-tune it at 4, 3 and 2 bits; print accuracy, sparsity and compression side by side.

Goals: 4-bit within 0.5 point of FP32 test accuracy, 2-bit within 2 points."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dgms_tvm.cli import one_line_errors, run_script

GOALS = {4: 0.5, 2: 2.0}  # bits -> allowed drop in points


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="digitnet")
    p.add_argument("--bits", type=int, nargs="+", default=[4, 3, 2])
    p.add_argument("--epochs", type=int, default=6, help="DGMS fine-tuning epochs")
    p.add_argument("--fp32-epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


@one_line_errors
def main(argv=None):
    args = parse(argv)
    from dgms_tvm.quant import recipe

    t0 = time.perf_counter()
    name, entry = recipe.digits_model(args.model)
    data = recipe.load_data("digits", entry, args.seed)
    fp32 = recipe.pretrain(name, data, args.fp32_epochs, args.seed)
    fp32_acc = recipe.evaluate(fp32, data.x_test, data.y_test)
    rows = []
    for bits in args.bits:
        res = recipe.quantize(fp32, data, bits, args.epochs, args.seed)
        s = res.exported.sparsity
        drop = 100 * (fp32_acc - res.accuracy)
        goal = GOALS.get(bits)
        rows.append({"bits": bits, "accuracy": res.accuracy, "drop_points": drop,
                     "sparsity": s, "compression": 32 / ((1 - s) * bits),
                     "goal_points": goal, "met": None if goal is None else drop <= goal})
    print(f"{name} on digits ({len(data.x_test)} test images), FP32 {args.fp32_epochs} epochs, "
          f"DGMS {args.epochs} epochs, seed {args.seed}, {time.perf_counter() - t0:.0f} s")
    print(f"{'model':<12}{'accuracy':>10}{'drop (pts)':>12}{'sparsity':>10}{'CR':>8}  goal")
    print(f"{'FP32':<12}{fp32_acc:>10.2%}{'':>12}{'':>10}{'1.0':>8}")
    for r in rows:
        goal = "" if r["goal_points"] is None else (
            f"drop <= {r['goal_points']}: {'met' if r['met'] else 'MISSED'}")
        print(f"{'DGMS ' + str(r['bits']) + '-bit':<12}{r['accuracy']:>10.2%}"
              f"{r['drop_points']:>12.2f}{r['sparsity']:>10.1%}{r['compression']:>8.1f}  {goal}")
    if args.json:
        args.json.write_text(json.dumps({"model": name, "fp32_accuracy": fp32_acc,
                                         "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(run_script(main))
