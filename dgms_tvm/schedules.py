"""Load the hand-written schedule knobs of a target (``schedules/<target>.json``) and apply them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import tvm

from .errors import UserError
from .kernels import FAMILIES, KERNEL_ATTR

#: Where the schedule files live (``$DGMS_TVM_SCHEDULES`` overrides).
SCHEDULE_DIR = Path(os.environ.get("DGMS_TVM_SCHEDULES",
                                   Path(__file__).resolve().parent.parent / "schedules"))


def load_knobs(target_name: str, directory: Path | None = None) -> dict[str, dict]:
    """Knobs per kernel family for ``target_name``."""
    path = Path(directory or SCHEDULE_DIR) / f"{target_name}.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"no schedule file for target {target_name!r} ({path})") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: invalid JSON ({err})") from None
    # A family whose kernels are written already scheduled has no knobs to require.
    missing = [f for f in FAMILIES if f not in doc and getattr(FAMILIES[f], "KNOBS", True)]
    if missing:
        raise UserError(f"{path}: no knobs for kernel families {missing}")
    return {f: doc.get(f, {}) for f in FAMILIES}


def apply_schedules(mod: tvm.IRModule, knobs: dict[str, dict]) -> tvm.IRModule:
    """Replace every codebook kernel in ``mod`` by its hand-scheduled version."""
    funcs = dict(mod.functions_items())
    for gv, func in funcs.items():
        if isinstance(func, tvm.tirx.PrimFunc) and func.attrs and KERNEL_ATTR in func.attrs:
            family = str(func.attrs[KERNEL_ATTR])
            funcs[gv] = FAMILIES[family].schedule(func, knobs[family])
    return tvm.IRModule(funcs, attrs=mod.attrs)
