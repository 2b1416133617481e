#!/usr/bin/env python3
"""Merge per-model tuning folders (<root>/<target>/<model>-w<bits>/ with a tuning.json, the
layout before one database per target) into <root>/<target>/: the records pruned to the best
few per kernel, the kernels whose best record is TVM's default dropped (compile keeps the
default for them anyway), each folder's tuning.json appended to runs.json; the folders are
removed unless --keep."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dgms_tvm.cli import one_line_errors, run_script


def parse(argv):
    from dgms_tvm.schedules.tuning_db import DEFAULT_LOGS, KEEP

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tuning-logs", type=Path, default=DEFAULT_LOGS)
    p.add_argument("--keep-records", type=int, default=KEEP,
                   help=f"records kept per kernel (default {KEEP})")
    p.add_argument("--keep", action="store_true", help="leave the per-model folders")
    return p.parse_args(argv)


@one_line_errors
def main(argv=None):
    args = parse(argv)
    from dgms_tvm.errors import UserError
    from dgms_tvm.schedules import tuning_db

    if args.keep_records < 1:
        raise UserError(f"--keep-records must be a positive integer, not {args.keep_records}")
    folders = sorted(p.parent for p in args.tuning_logs.glob("*/*/tuning.json"))
    if not folders:
        raise UserError(f"no per-model tuning folder (<target>/<model>/tuning.json) under "
                        f"{args.tuning_logs}")
    for target in sorted({f.parent for f in folders}):
        sources = [f for f in folders if f.parent == target]
        runs = []
        for f in sources:
            meta = json.loads((f / "tuning.json").read_text())
            runs.append(meta | {"merged_from": f.name})
        before = sum((f / n).stat().st_size for f in sources for n in tuning_db.DB_FILES)
        stats = tuning_db.merge(sources, target, args.keep_records, runs)
        # compile keeps TVM's default for these whatever their records say
        dropped = tuning_db.drop_default_wins(target)
        after = sum((target / n).stat().st_size for n in tuning_db.DB_FILES)
        print(f"{target.name}: {len(sources)} folders, {stats['records_in']} records -> "
              f"{stats['records_out']} ({stats['workloads']} kernels, {dropped} of them dropped: "
              "TVM's default measured best), "
              f"{before / 1e6:.1f} -> {after / 1e6:.1f} MB")
        if not args.keep:
            for f in sources:
                shutil.rmtree(f)


if __name__ == "__main__":
    sys.exit(run_script(main))
