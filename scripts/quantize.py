#!/usr/bin/env python3
"""Train a built-in model on a packaged data set, DGMS-quantize it, and export it for
scripts/compile.py (.pt2, or .onnx with --onnx)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dgms_tvm import zoo
from dgms_tvm.cli import one_line_errors, run_script
from dgms_tvm.errors import UserError
from dgms_tvm.format import SUPPORTED_BITS


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="digitnet", help=f"built-in: {', '.join(zoo.MODELS)}")
    p.add_argument("--bits", type=int, default=4,
                   help=f"{', '.join(map(str, SUPPORTED_BITS))} (default 4)")
    p.add_argument("--data", default="digits", help="packaged data set (digits)")
    p.add_argument("--epochs", type=int, default=6, help="DGMS fine-tuning epochs")
    p.add_argument("--fp32-epochs", type=int, default=15, help="FP32 pre-training epochs")
    p.add_argument("--include-first", action="store_true", help="quantize the first conv too")
    p.add_argument("--include-linear", action="store_true", help="quantize Linear layers too")
    p.add_argument("--init", default="kmeans", choices=["kmeans", "empirical"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=Path("model.pt2"))
    p.add_argument("--onnx", action="store_true", help="write ONNX (default: .pt2)")
    args = p.parse_args(argv)
    if args.bits not in SUPPORTED_BITS:  # before any training
        widths = ", ".join(map(str, SUPPORTED_BITS))
        raise UserError(f"--bits {args.bits}: the packed widths are {widths}"
                        + (" (a 5 to 7-bit model would be stored at 8 bits)"
                           if 4 < args.bits < 8 else ""))
    return args


@one_line_errors
def main(argv=None):
    args = parse(argv)
    from dgms_tvm.quant import recipe

    if args.epochs < 0 or args.fp32_epochs < 0:
        raise UserError("epochs must be >= 0")
    name, entry = recipe.digits_model(args.model)
    data = recipe.load_data(args.data, entry, args.seed)
    fp32 = recipe.pretrain(name, data, args.fp32_epochs, args.seed)
    fp32_acc = recipe.evaluate(fp32, data.x_test, data.y_test)
    res = recipe.quantize(fp32, data, args.bits, args.epochs, args.seed,
                          include_first=args.include_first,
                          include_linear=args.include_linear, init=args.init)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    example = data.x_test[:1]
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    try:
        (res.exported.save_onnx if args.onnx else res.exported.save_pt2)(tmp, example)
        tmp.replace(args.output)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"{name} on {args.data}: FP32 test accuracy {fp32_acc:.2%}; DGMS {args.bits}-bit "
          f"{res.accuracy:.2%} at sparsity {res.exported.sparsity:.1%} over "
          f"{len(res.exported.layers)} layers -> {args.output}")


if __name__ == "__main__":
    sys.exit(run_script(main))
