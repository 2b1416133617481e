#!/usr/bin/env python3
"""Batch-1 codebook dense layers (4096x4096, 16384x4096) against the best FP32 GEMV on this
host (numpy's BLAS, our TVM GEMV, TVM tuned here), with the machine's memory bandwidth, side
by side in one run."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# TVM's pool spins its threads after each call, which on a machine with few cores steals them
# from the numpy rows timed next to it; parked threads cost our rows a wake-up instead.
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")

from dgms_tvm.cli import one_line_errors, run_script
from dgms_tvm.cli import shape_nxk as shape
from dgms_tvm.errors import UserError


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shape", type=shape, action="append",
                   help="weight [N]x[K] (repeatable; default 4096x4096 and 16384x4096)")
    p.add_argument("--bits", type=int, default=4, choices=(1, 2, 3, 4))
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (median)")
    p.add_argument("--trials", type=int, default=32,
                   help="MetaSchedule trials for the tuned TVM FP32 row (0: no such row)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


@one_line_errors
def main(argv=None):
    args = parse(argv)
    from dgms_tvm.bench import gemv_kernels

    if args.rounds < 1:
        raise UserError("--rounds must be at least 1")
    res = gemv_kernels.run(args.shape or [(4096, 4096), (16384, 4096)], args.bits,
                           args.rounds, args.trials)
    print(gemv_kernels.format_report(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(run_script(main))
