"""Emulated Cortex-A devices behind a TVM RPC tracker: start, status, stop."""

from __future__ import annotations

import argparse

from ..cli import one_line_errors


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="start a tracker (unless one answers) and N devices")
    s.add_argument("--cpu", default="cortex-a72", help="emulated core (a target profile)")
    s.add_argument("--count", type=int, default=1,
                   help="devices to run under the key (at most 2 per host core)")
    s.add_argument("--tracker", help="HOST:PORT of a tracker to use or start "
                                     "(default: the one started here, else a new one)")
    s.add_argument("--key", help="registration key (default: the CPU name)")
    s.add_argument("--no-instruction-counts", action="store_true",
                   help="run the devices without the instruction-count plugin (as a board)")
    sub.add_parser("status", help="the tracker's queue and what was started here")
    sub.add_parser("stop", help="stop exactly what start started")
    return p.parse_args(argv)


@one_line_errors
def main(argv=None):
    args = parse(argv)
    from ..device import manager

    if args.cmd == "start":  # (a Ctrl-C in here stops what it started)
        info = manager.start(args.cpu, args.count, args.tracker, args.key,
                             counting=not args.no_instruction_counts)
        print(f"ready: {info['count']} x {args.cpu} under key {info['key']!r} at tracker "
              f"{info['tracker']}")
    elif args.cmd == "status":
        from ..device.status import status

        print(status())
    else:
        manager.stop()

