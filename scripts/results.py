#!/usr/bin/env python3
"""docs/results.md (the current figures per core and model) and the README's results table,
made from the bench reports kept in docs/results/.

  python scripts/results.py add OUT [OUT ...]  keep these bench output folders' reports
                                               (report.json), then write both
  python scripts/results.py                    write both from the kept reports
  python scripts/results.py --check            write nothing; exit 1 if either is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dgms_tvm.cli import one_line_errors, run_script

ROOT = Path(__file__).resolve().parent.parent


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("action", nargs="?", choices=["add"], help="keep the reports of OUT first")
    p.add_argument("reports", nargs="*", type=Path, help="bench output folders (with add)")
    p.add_argument("--check", action="store_true", help="only say whether the files are stale")
    args = p.parse_args(argv)
    if (args.action == "add") != bool(args.reports):
        p.error("add takes one or more bench output folders, and only add does")
    return args


@one_line_errors
def main(argv=None):
    args = parse(argv)
    from dgms_tvm.bench import results

    kept = ROOT / "docs" / "results"
    if args.action == "add":
        for path in results.add(args.reports, kept):
            print(f"kept {path.relative_to(ROOT)}")
    stale = results.write(kept, ROOT / "docs" / "results.md", ROOT / "README.md", args.check)
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'} {path.relative_to(ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(run_script(main))
