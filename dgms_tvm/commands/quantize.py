"""Train a built-in model on a packaged data set, DGMS-quantize it, and export it for
scripts/compile.py: a .pt2 (torch.export) or an .onnx file, by the --output's extension."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import outputs, zoo
from ..cli import one_line_errors
from ..errors import UserError
from ..format import SUPPORTED_BITS


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
    p.add_argument("--output", type=Path, default=None,
                   help="a .pt2 or .onnx file: the format follows the extension "
                        "(default model.pt2, model.onnx with --onnx)")
    p.add_argument("--onnx", action="store_true", help="write ONNX (as an --output *.onnx)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --output")
    args = p.parse_args(argv)
    if args.bits not in SUPPORTED_BITS:  # before any training
        widths = ", ".join(map(str, SUPPORTED_BITS))
        raise UserError(f"--bits {args.bits}: the packed widths are {widths}"
                        + (" (a 5 to 7-bit model would be stored at 8 bits)"
                           if 4 < args.bits < 8 else ""))
    check_output(args)
    return args


def check_output(args) -> None:
    """Before any training: the format from the extension, and a file that may be written."""
    if args.output is None:
        args.output = Path("model.onnx" if args.onnx else "model.pt2")
    out = args.output
    if out.is_dir():
        raise UserError(f"--output {out} is a folder; give a file name (.pt2 or .onnx)")
    if out.suffix not in (".pt2", ".onnx"):
        raise UserError(f"--output {out}: must end in .pt2 (torch.export) or .onnx")
    if args.onnx and out.suffix != ".onnx":
        raise UserError(f"--output {out} is a .pt2 name but --onnx asks for ONNX")
    if out.exists() and not args.force:
        raise UserError(f"--output {out} exists; remove it or pass --force to overwrite it")
    outputs.check_writable(out, "model")


@one_line_errors
def main(argv=None):
    args = parse(argv)
    from ..quant import recipe

    if args.epochs < 0 or args.fp32_epochs < 0:
        raise UserError("epochs must be >= 0")
    name, entry = recipe.digits_model(args.model)
    data = recipe.load_data(args.data, entry, args.seed)
    fp32 = recipe.pretrain(name, data, args.fp32_epochs, args.seed)
    fp32_acc = recipe.evaluate(fp32, data.x_test, data.y_test)
    res = recipe.quantize(fp32, data, args.bits, args.epochs, args.seed,
                          include_first=args.include_first,
                          include_linear=args.include_linear, init=args.init)
    save = res.exported.save_onnx if args.output.suffix == ".onnx" else res.exported.save_pt2
    outputs.write_atomic(args.output, lambda tmp: save(tmp, data.x_test[:1]), "model")
    print(f"{name} on {args.data}: FP32 test accuracy {fp32_acc:.2%}; DGMS {args.bits}-bit "
          f"{res.accuracy:.2%} at sparsity {res.exported.sparsity:.1%} over "
          f"{len(res.exported.layers)} layers -> {args.output}")

