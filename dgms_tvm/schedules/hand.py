"""Load the hand-written schedule knobs of a target and apply them.

A target's knobs are the numbers a person tunes, from its core class's file
(``schedules/<profile.schedule>.json``), plus the instruction choices that follow from what
its core can do (:func:`capability_knobs`, from the profile): no file states a capability.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
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
        # i8mm's smmla (32 int8 multiply-adds), or plain code
        "q8m_conv2d": {"mmla": "smmla" if profile.i8mm else ""},
        # the widening conv's NEON pairwise add (plain vector code elsewhere), and its
        # int8 outputs' rounding
        "q8l_conv2d": {"pairwise": "sadalp", "round": "fcvtns"} if profile.neon
        else {"pairwise": ""},
        # the lookup-table conv's tbl / sadalp / sqrshrn and int8 outputs' rounding
        "q8t_conv2d": {"lookup": "tbl", "round": "fcvtns"} if profile.neon else {},
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


#: The knob section of the ops no kernel family owns (:func:`parallel_ops`).
OPS = "ops"


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
    knobs = {f: {**doc.get(f, {}), **derived.get(f, {})} for f in FAMILIES}
    knobs[OPS] = dict(doc.get(OPS, {}))
    return knobs


def apply_schedules(mod: tvm.IRModule, knobs: dict[str, dict]) -> tvm.IRModule:
    """Replace every codebook kernel in ``mod`` by its hand-scheduled version, and run the
    other ops' loops in parallel where the schedule file says so (:func:`schedule_op`)."""
    funcs = dict(mod.functions_items())
    for gv, func in funcs.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        if func.attrs and KERNEL_ATTR in func.attrs:
            family = str(func.attrs[KERNEL_ATTR])
            funcs[gv] = FAMILIES[family].schedule(func, knobs[family])
        else:
            funcs[gv] = schedule_op(func, knobs)
    return tvm.IRModule(funcs, attrs=mod.attrs)


def schedule_op(func: tvm.tirx.PrimFunc, knobs: dict[str, dict]) -> tvm.tirx.PrimFunc:
    """An op no kernel family owns, as the schedule file asks: its loops in parallel
    (``"ops": {"parallel": true}``, :func:`parallel_ops`) or as TVM legalized it."""
    return parallel_ops(func) if knobs.get(OPS, {}).get("parallel", False) else func


#: Fewest iterations of the fused leading spatial loops worth a parallel launch.
PARALLEL_MIN = 16


def parallel_ops(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """An op no kernel family owns (a max pool, the mean before a classifier, an add the
    passes left), as Relax legalized it: each loop nest's leading spatial loops fused and
    run in parallel, where TVM leaves them serial (ResNet-18's max pool on the x86 host:
    docs/kernels.md). A nest that does not allow it keeps its loops. The schedule files of
    multi-threaded hosts ask for it (``"ops": {"parallel": true}``); the aarch64 proxy counts
    one thread, where a parallel launch only adds instructions (docs/kernels.md)."""
    sch = tvm.s_tir.Schedule(func)
    try:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except (tvm.s_tir.ScheduleError, tvm.TVMError):
        return func
    for block in blocks:
        loops = sch.get_loops(block)
        kinds = [int(iv.iter_type) for iv in sch.get(block).iter_vars]
        lead = 0
        while lead < min(len(loops), len(kinds)) and kinds[lead] == 0:  # data parallel
            lead += 1
        if lead == 0:
            continue
        extents = [int(sch.get(lp).extent) for lp in loops[:lead]]
        take = next((i + 1 for i in range(lead) if np.prod(extents[:i + 1]) >= PARALLEL_MIN),
                    lead)
        if np.prod(extents[:take]) < 2:
            continue
        try:
            sch.parallel(sch.fuse(*loops[:take]) if take > 1 else loops[0])
        except (tvm.s_tir.ScheduleError, tvm.TVMError):
            continue
    return sch.mod["main"]
