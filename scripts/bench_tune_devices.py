#!/usr/bin/env python3
"""Tuning wall time with one emulated device against two, side by side in one run: the same
`scripts/tune.py` command (same model, trials and seed) into two fresh log folders, each with
its own devices started under a key of its own, so neither run sees the other's devices.

On an emulated device a trial's cost is mostly the device's run (QEMU) and the host's build;
with N devices MetaSchedule's RPC runner keeps N measurements in flight. The speed-up is
bounded by the host's cores: two devices on a 2-core host compete with the builder."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dgms_tvm.cli import one_line_errors, run_script

ROOT = Path(__file__).resolve().parent.parent


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="digitnet")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--target", default="cortex-a72")
    p.add_argument("--trials", type=int, default=48)
    p.add_argument("--per-iter", type=int, default=8)
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


@one_line_errors
def main(argv=None):
    args = parse(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dgms-tune-cmp-") as tmp:
        for n in args.devices:
            logs = Path(tmp) / f"{n}-devices"
            cmd = [sys.executable, str(ROOT / "scripts" / "tune.py"), "--model", args.model,
                   "--bits", str(args.bits), "--target", args.target, "--trials",
                   str(args.trials), "--per-iter", str(args.per_iter), "--devices", str(n),
                   "--key", f"dgms-tune-cmp-{n}", "--tuning-logs", str(logs)]
            print(f"[{n} device(s)] {' '.join(cmd[1:])}", file=sys.stderr)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  text=True)
            wall = time.perf_counter() - t0
            if proc.returncode:
                raise SystemExit(f"error: tuning with {n} device(s) failed: {proc.stdout}")
            meta = json.loads((logs / args.target / "runs.json").read_text())[-1]
            trials = meta["total_trials"]
            rows.append({"devices": n, "wall_s": wall, "tuning_s": meta["seconds"],
                         "trials": trials})
    base = rows[0]["tuning_s"]
    print(f"tuning {args.model} {args.bits}-bit + FP32 for {args.target} on emulated devices, "
          f"{args.trials} trials requested, measured by instruction counts")
    print(f"{'devices':>8}{'trials':>8}{'tuning s':>10}{'wall s':>9}{'speed-up':>10}")
    for r in rows:
        print(f"{r['devices']:>8}{r['trials']:>8}{r['tuning_s']:>10.1f}{r['wall_s']:>9.1f}"
              f"{base / r['tuning_s']:>9.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(run_script(main))
