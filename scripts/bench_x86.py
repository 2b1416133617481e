#!/usr/bin/env python3
"""Time the FP32 and the codebook build of a model on this host, side by side in one run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dgms_tvm.cli import logs_root, one_line_errors, run_script


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="resnet18", help="built-in model or .onnx/.pt2 file")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--repeat", type=int, default=10, help="timed repeats (median reported)")
    p.add_argument("--number", type=int, default=5, help="calls per repeat")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--tuning-logs", default="tuning_logs",
                   help="root of the tuning logs (tuned rows when they hold this model), "
                        "or 'none'")
    p.add_argument("--per-layer", action="store_true",
                   help="also time the codebook int8 build's layers one by one beside the "
                        "fastest onnxruntime int8 configuration's (its profiler), and sum the "
                        "gap by kind of layer")
    return p.parse_args(argv)


@one_line_errors
def main(argv=None):
    args = parse(argv)
    from dgms_tvm.bench import on_host

    rep = on_host.compare(args.model, args.bits, args.repeat, args.number,
                          tuning_logs=logs_root(args.tuning_logs), per_layer=args.per_layer)
    print(on_host.format_report(rep))
    if args.json:
        args.json.write_text(json.dumps(rep, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(run_script(main))
