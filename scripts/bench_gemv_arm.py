#!/usr/bin/env python3
"""Batch-1 codebook dense layers on an emulated Cortex-A: aarch64 instructions per call of
each kernel a codebook layer can run there (the generic exact dense kernel, the lut GEMV's
tbl and one-load forms) beside the FP32 GEMV, side by side in one run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dgms_tvm.cli import one_line_errors, run_script
from dgms_tvm.cli import shape_nxk as shape


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--target", default="cortex-a72", help="an emulated Cortex-A profile")
    p.add_argument("--shape", type=shape, action="append",
                   help="weight [N]x[K] (repeatable; default 1000x512: a classifier)")
    p.add_argument("--bits", default="4,2,1", help="codebook widths (default 4,2,1)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


@one_line_errors
def main(argv=None):
    args = parse(argv)
    from dgms_tvm.bench import gemv_kernels
    from dgms_tvm.targets import get_profile

    get_profile(args.target)  # an unknown target fails before the work
    bits = [int(b) for b in args.bits.split(",")]
    res = gemv_kernels.device_counts(args.target, args.shape or [(1000, 512)], bits)
    print(gemv_kernels.format_device_counts(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(run_script(main))
