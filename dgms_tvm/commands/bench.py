"""FP32 vs DGMS build of a model on a Cortex-A device from a TVM tracker, side by side.

By default the devices are local emulated ones (--devices of them started here if none runs
under the key, stopped after); give --tracker HOST:PORT --key KEY for real boards. The jobs
(both whole models, every kernel alone, the onnxruntime peers) spread over every free device
under the key. Writes report.json, report.md and report.png into --output and prints the
tables."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import logs_root, one_line_errors
from ..strategies import STRATEGIES


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--target", default="cortex-a72")
    p.add_argument("--tracker", help="HOST:PORT (default: local emulated devices)")
    p.add_argument("--key", help="device key (default: the target name)")
    p.add_argument("--output", type=Path, default=Path("bench-out"))
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--number", type=int, default=1)
    p.add_argument("--devices", type=int, default=2,
                   help="emulated devices to start when none runs (default 2)")
    p.add_argument("--tuning-logs", default="tuning_logs",
                   help="root of the tuning logs to apply, or 'none' (default tuning_logs/)")
    p.add_argument("--no-per-layer", action="store_true",
                   help="skip the per-layer breakdown (each kernel run alone)")
    p.add_argument("--no-peers", action="store_true",
                   help="skip the onnxruntime peer rows (emulated devices only)")
    p.add_argument("--strategy", default="auto", choices=list(STRATEGIES),
                   help="the DGMS build's codebook conv2d arithmetic (see compile.py; "
                        "default auto)")
    return p.parse_args(argv)


@one_line_errors
def main(argv=None):
    args = parse(argv)
    import contextlib

    from ..bench import on_device, provenance, report
    from ..device import client, manager

    # Every argument is checked before any device starts (that takes a minute).
    emulated = not args.tracker
    on_device.check_args(args.model, args.bits, args.target, args.output, args.repeat,
                         args.number, emulated)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    with contextlib.ExitStack() as stack:
        counting = False
        if emulated:
            manager.check_count(args.devices, "--devices")
            # Devices found running stay running after; devices started here stop once no
            # other run holds them.
            tracker, info = stack.enter_context(
                manager.local_devices(args.target, args.devices, args.key, log=log))
            counting = info["instruction_counts"]
        else:
            tracker = client.Tracker(*client.parse_tracker(args.tracker))
        rep = on_device.run(args.model, args.bits, args.target, tracker, args.key,
                            args.output, args.repeat, args.number, emulated=emulated,
                            counting=counting, peers=not args.no_peers,
                            per_layer=not args.no_per_layer,
                            tuning_logs=logs_root(args.tuning_logs),
                            strategy=args.strategy,
                            provenance=provenance.record(
                                "bench", sys.argv[1:] if argv is None else argv))
    print(report.format_markdown(rep))
    print(f"report: {args.output}/report.md, report.json, report.png")

