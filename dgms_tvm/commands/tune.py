"""Tune a model's kernels (its DGMS build and its FP32 baseline) with MetaSchedule and the
XGBoost cost model; records go to the target's one database, <tuning-logs>/<target>/
(which compile applies to any model with the same kernels), and the run to its runs.json.

x86 is measured here (wall time). An ARM target is measured on devices from a tracker: the
local emulated ones by default (started here if none runs under the key, stopped after),
by their instruction counts (or their estimated cycles: --measure cycles) unless --measure
time; a real board with --tracker/--key (time).
Killed at any point, the logs stay loadable, and the same command resumes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import one_line_errors
from ..errors import UserError
from ..strategies import STRATEGIES


def parse(argv):
    from ..schedules.tuning_db import DEFAULT_LOGS

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--target", default="x86")
    p.add_argument("--trials", type=int, default=2000,
                   help="trials over all tasks of both builds, in all (spread by work per "
                        "task, at least a round of --per-iter each: with fewer, the largest "
                        "tasks only)")
    p.add_argument("--per-iter", type=int, default=16, help="candidates per search round")
    p.add_argument("--tracker", help="HOST:PORT of real boards (default: local emulated)")
    p.add_argument("--key", help="device key (default: the target name)")
    p.add_argument("--devices", type=int, default=2,
                   help="emulated devices to start when none runs (default 2)")
    p.add_argument("--measure", choices=("time", "instructions", "cycles"),
                   help="default: instructions on emulated devices, else time; cycles: the "
                        "estimate of each executed block by the core's llvm-mca model")
    p.add_argument("--tuning-logs", type=Path, default=DEFAULT_LOGS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--remeasure", type=int, metavar="ROUNDS",
                   help="tune nothing: measure each task's best record again against its "
                        "untuned baseline, interleaved over ROUNDS rounds, and keep those two "
                        "with the new figures (wall-time logs tuned on a busy machine)")
    p.add_argument("--strategy", default="auto", choices=list(STRATEGIES),
                   help="the DGMS build whose kernels are tuned, as compile.py resolves it "
                        "(default auto: the build compile makes by default)")
    return p.parse_args(argv)


@one_line_errors
def main(argv=None):
    args = parse(argv)
    import contextlib

    from .. import pipeline
    from ..device import client, manager
    from ..device.sysroot import cache_dir
    from ..schedules import tuning_db
    from ..targets import get_profile
    from ..tune import driver, remeasure, tuner
    from ..tune.budget import check_trials

    check_trials(args.trials, args.per_iter)
    if args.remeasure is not None and args.remeasure < 1:
        raise UserError(f"--remeasure must be a positive integer, not {args.remeasure}")
    profile = get_profile(args.target)
    folder = tuning_db.target_dir(args.tuning_logs, profile.name)
    pipeline.check_model(args.model)  # (before any device starts)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    tracker, key, workers, measure = None, None, 1, args.measure or "time"
    with contextlib.ExitStack() as stack:
        if profile.is_arm:
            key = args.key or profile.name
            if args.tracker:
                if measure != "time":
                    raise UserError(f"--measure {measure} needs the emulated devices (a board "
                                    "is measured by time): leave out --tracker")
                tracker = client.Tracker(*client.parse_tracker(args.tracker))
                if not tracker.reachable():
                    tracker.summary()  # one-line error when unreachable
            else:
                measure = args.measure or "instructions"
                manager.check_count(args.devices, "--devices")
                # Devices found running stay running after; those started here stop once
                # no other run holds them.
                tracker, _ = stack.enter_context(
                    manager.local_devices(profile.name, args.devices, key, log=log))
            workers = max(1, tracker.free(key))
        loaded = pipeline.load_model(args.model, args.bits, args.seed)
        m = tuner.make_measure(profile, measure, tracker, key, workers,
                               cache_dir() / "tuning")
        if args.remeasure:
            log(f"re-measuring the {args.model} {args.bits}-bit logs for {profile.name} by "
                f"{m.name} on {m.device}, {args.remeasure} rounds")
            rows = remeasure.remeasure(loaded, args.model, args.bits, profile, m,
                                       args.tuning_logs, args.remeasure, log=log)
            print(f"{len(rows)} tasks re-measured: {folder}")
            return
        log(f"tuning {args.model} {args.bits}-bit and FP32 for {profile.name}, {args.trials} "
            f"trials, measured by {m.name} on {m.device}")
        run = driver.tune(loaded, args.model, args.bits, profile, args.trials, m,
                          args.tuning_logs, per_iter=args.per_iter, seed=args.seed,
                          log=log, strategy=args.strategy)
    print(f"{run['total_trials']} trials run ({args.trials} requested, {run['seconds']:.0f} s "
          f"of tuning in all) into {folder}")

