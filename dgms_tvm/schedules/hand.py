"""Load the hand-written schedule knobs of a target and apply them.

A target's knobs are the numbers a person tunes, from its core class's file
(``schedules/<profile.schedule>.json``), plus the instruction choices that follow from what
its core can do (:func:`capability_knobs`, from the profile): no file states a capability.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import tvm

from ..errors import UserError
from ..kernels import FAMILIES, KERNEL_ATTR
from ..targets import TargetProfile, get_profile

#: Where the schedule files live (``$DGMS_TVM_SCHEDULES`` overrides).
SCHEDULE_DIR = Path(os.environ.get("DGMS_TVM_SCHEDULES",
                                   Path(__file__).resolve().parents[2] / "schedules"))


def capability_knobs(profile: TargetProfile) -> dict[str, dict]:
    """The instructions each kernel family's hand schedule uses on ``profile``'s core."""
    return {
        # sdot (16 int8 multiply-adds), x86 vpdpbusd (64), or generic vector code
        "q8_conv2d": {"dot": "sdot" if profile.dotprod else "vnni" if profile.vnni
                      else "none"},
        # the widening conv's NEON pairwise add (plain vector code elsewhere), and its
        # int8 outputs' rounding
        "q8l_conv2d": {"pairwise": "sadalp", "round": "fcvtns"} if profile.neon
        else {"pairwise": ""},
        # 16 weights per table lookup: NEON tbl, x86 SSSE3 pshufb, else one load each
        "q8_decode": {"lookup": "tbl" if profile.neon else "pshufb" if profile.ssse3
                      else "scalar"},
        # the lut GEMV's tables looked up 16 features per NEON tbl
        "cb_gemv": {"lookup": "tbl"} if profile.neon else {},
        # a depthwise conv writing int8 rounds and converts with one NEON fcvtns
        "dw_conv2d": {"round": "fcvtns"} if profile.neon else {},
        "q8_dw_conv2d": {"round": "fcvtns"} if profile.neon else {},
    }


def schedule_file(profile: TargetProfile, directory: Path | None = None) -> Path:
    return Path(directory or SCHEDULE_DIR) / f"{profile.schedule}.json"


def load_knobs(target: str | TargetProfile, directory: Path | None = None) -> dict[str, dict]:
    """Knobs per kernel family for ``target`` (a profile or its name)."""
    profile = get_profile(target) if isinstance(target, str) else target
    path = schedule_file(profile, directory)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"no schedule file for target {profile.name!r} ({path})") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: invalid JSON ({err})") from None
    # A family whose kernels are written already scheduled has no knobs to require.
    missing = [f for f in FAMILIES if f not in doc and FAMILIES[f].knobs]
    if missing:
        raise UserError(f"{path}: no knobs for kernel families {missing}")
    derived = capability_knobs(profile)
    return {f: {**doc.get(f, {}), **derived.get(f, {})} for f in FAMILIES}


def apply_schedules(mod: tvm.IRModule, knobs: dict[str, dict]) -> tvm.IRModule:
    """Replace every codebook kernel in ``mod`` by its hand-scheduled version."""
    funcs = dict(mod.functions_items())
    for gv, func in funcs.items():
        if isinstance(func, tvm.tirx.PrimFunc) and func.attrs and KERNEL_ATTR in func.attrs:
            family = str(func.attrs[KERNEL_ATTR])
            funcs[gv] = FAMILIES[family].schedule(func, knobs[family])
    return tvm.IRModule(funcs, attrs=mod.attrs)
