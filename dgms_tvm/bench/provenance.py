"""Where a benchmark's figures come from: the command that measured them, the commit of the
code measured (``+changes`` where the checkout differed from it) and the day."""

from __future__ import annotations

import datetime
import shlex
import subprocess
from pathlib import Path

#: The checkout this package runs from.
ROOT = Path(__file__).resolve().parents[2]
#: What a build reads: a change here changes the figures.
MEASURED = ("dgms_tvm", "schedules", "tuning_logs")


def commit() -> str | None:
    """The checkout's commit, ``+changes`` where what a build reads differs from it; None
    outside a git checkout (an installed package)."""
    def git(*args) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--", *MEASURED)
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+changes" if changed else "")


def record(command: str, argv: list[str]) -> dict:
    """The provenance fields of a report: ``dgms-tvm COMMAND ARGS...``, the commit, the day."""
    return {"command": f"dgms-tvm {command} {shlex.join(argv)}".rstrip(),
            "commit": commit(), "date": datetime.date.today().isoformat()}
