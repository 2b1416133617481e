"""Compile a DGMS model (built-in, .onnx or .pt2) into a deployable artifact folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import targets, zoo
from ..cli import logs_root, one_line_errors
from ..strategies import STRATEGIES


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="resnet18",
                   help=f"built-in model ({', '.join(zoo.MODELS)}) or a .onnx / .pt2 file "
                        "(default: resnet18)")
    p.add_argument("--bits", type=int, default=None,
                   help="codebook width: the built-in models are quantized at it (default 4); "
                        "for files, the widest codebook accepted (default: any of 1,2,3,4,8)")
    p.add_argument("--target", default="arm",
                   help=f"target profile: {', '.join(targets.names())} (default: arm)")
    p.add_argument("--output", type=Path, default=Path("out"),
                   help="artifact folder (default out/)")
    p.add_argument("--fp32", action="store_true",
                   help="build the FP32 baseline: same graph, no codebook lowering")
    p.add_argument("--seed", type=int, default=0, help="seed of the built-in model's weights")
    p.add_argument("--tuning-logs", default="tuning_logs",
                   help="root of the tuning logs: the target's database <root>/<target>/ "
                        "applies to any model (records are keyed by kernel), "
                        "or 'none' for the hand schedules only (default tuning_logs/)")
    p.add_argument("--strategy", default="auto", choices=list(STRATEGIES),
                   help="codebook layer arithmetic: exact (float32 activations, matches "
                        "PyTorch), int8 (activations quantized per tensor, int32 sums; sdot "
                        "on dotprod cores, the widening kernel on other aarch64 cores), "
                        "int8-full (int8 with 8-bit weights where int8 keeps 7: cortex-a53 / "
                        "a72; less error, slower), lut "
                        "(float32 activation lookup tables: batch-1 dense layers; convs stay "
                        "exact), or auto: int8 on aarch64 and x86 with VNNI, else exact "
                        "(default auto; the manifest says what each layer got)")
    p.add_argument("--calibration", type=Path, default=None,
                   help="inputs to calibrate the int8 values passed between layers on: .npy "
                        "(one input, or several stacked along a first axis) or .npz (default: "
                        "the model's example input and 7 drawn around it)")
    p.add_argument("--choose", action="store_true",
                   help="measure each conv's kernels in two builds and give each layer the "
                        "cheaper: on x86 int8 or exact, timed here; on cortex-a53 / a72 the "
                        "lookup-table or the widening int8 conv, by the cycle estimate on "
                        "emulated devices (the manifest's choices keep both figures)")
    p.add_argument("--quiet", action="store_true", help="no progress or table")
    return p.parse_args(argv)


@one_line_errors
def main(argv=None):
    args = parse(argv)
    from .. import pipeline
    from .run import load_inputs

    cal = None if args.calibration is None else load_inputs(args.calibration, "--calibration")
    manifest = pipeline.compile_model(args.model, args.target, args.output, bits=args.bits,
                                      fp32=args.fp32, seed=args.seed, quiet=args.quiet,
                                      tuning_logs=logs_root(args.tuning_logs),
                                      strategy=args.strategy, calibration_arrays=cal,
                                      choose=args.choose)
    if not args.quiet:
        print(pipeline.format_table(manifest))
        print(f"artifact: {args.output}/{manifest['library']} + manifest.json")

