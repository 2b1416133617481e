#!/usr/bin/env python3
"""The `bench` command (`dgms-tvm bench`): see dgms_tvm/commands/bench.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dgms_tvm.cli import run_script
from dgms_tvm.commands.bench import main

if __name__ == "__main__":
    sys.exit(run_script(main))
