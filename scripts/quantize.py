#!/usr/bin/env python3
"""The `quantize` command (`dgms-tvm quantize`): see dgms_tvm/commands/quantize.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dgms_tvm.cli import run_script
from dgms_tvm.commands.quantize import main

if __name__ == "__main__":
    sys.exit(run_script(main))
