"""Applying tuning records at compile time: each kernel gets the best schedule a MetaSchedule
database holds for it, else its hand schedule (codebook kernels) or TVM's default.

Records are keyed by the kernel's structure (MetaSchedule's workload hash), never by model:
one target's database serves every model whose kernels it has seen. This module is part of
the compile path and imports nothing from the tuner.
"""

from __future__ import annotations

import numpy as np

# how[kernel] values: a searched record applied; TVM's default, which its own record measured
# best; the hand schedule; TVM's default (no record).
TUNED, DEFAULT_MEASURED, HAND, DEFAULT = "tuned", "default-measured", "hand", "default"
MATCHED = (TUNED, DEFAULT_MEASURED)


def apply_database(mod, db, target, knobs: dict) -> tuple[object, dict[str, str]]:
    """Every PrimFunc of a prepared-but-unscheduled module gets its tuned schedule when the
    database holds one, else the hand schedule (codebook kernels) or none (TVM's default;
    its loops in parallel where the schedule file asks and no record says the serial one
    measured best: :func:`.hand.schedule_op`).

    Returns
    -------
    (IRModule, {function name: "tuned" | "default-measured" | "hand" | "default"})
        A kernel matched a record when its value is in :data:`MATCHED`.
    """
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from ..kernels import FAMILIES
    from ..kernels.common import KERNEL_ATTR
    from .hand import schedule_op

    funcs, how = dict(mod.functions_items()), {}
    untuned_best = untuned_wins(db) if db is not None else set()
    for gv, func in list(funcs.items()):
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        sch, default_won = None, False
        if db is not None:
            with target:
                sch = ms.tir_integration.compile_tir(db, func, target)
            if sch is not None and workload_hash(func) in untuned_best:
                sch, default_won = None, True  # TVM's default beat every searched schedule
        fam = str(func.attrs[KERNEL_ATTR]) if func.attrs and KERNEL_ATTR in func.attrs \
            else None
        if sch is not None:
            new = sch.mod["main"].without_attr("global_symbol")
            funcs[gv] = new.with_attr("tirx.is_scheduled", True)
            how[gv.name_hint] = TUNED
        elif fam is not None:
            funcs[gv] = FAMILIES[fam].schedule(func, knobs[fam])
            how[gv.name_hint] = HAND
        elif default_won:
            how[gv.name_hint] = DEFAULT_MEASURED
        else:  # no record: as the hand-scheduled build runs it
            funcs[gv] = schedule_op(func, knobs)
            how[gv.name_hint] = DEFAULT
    return tvm.IRModule(funcs, attrs=mod.attrs), how


def workload_hash(func) -> int:
    """MetaSchedule's key of a PrimFunc: the structural hash of its normalised module."""
    import tvm_ffi
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    return tvm_ffi.structural_hash(_normalize_mod(func))


def record_cost(record) -> float | None:
    """The mean of a record's measurements, or None for a failed one (MetaSchedule stores
    1e10 s for a candidate that did not build or run)."""
    secs = [float(v) for v in (record.run_secs or [])]
    if not secs or not all(v < 1e9 for v in secs):
        return None
    return float(np.mean(secs))


def untuned_wins(db) -> set[int]:
    """Workloads (structural hashes) whose best record is the untuned baseline with an empty
    trace (TVM's default, what the tuner records first for a kernel without a hand schedule).

    MetaSchedule counts a record with an empty trace as invalid: its queries skip it and
    return the best *searched* schedule, even one measured slower than the baseline (seen on
    a cortex-a72 BatchNorm kernel: docs/kernels.md). Such a kernel must keep TVM's default.
    """
    import tvm_ffi

    empty, searched = {}, {}
    for r in db.get_all_tuning_records():
        cost = record_cost(r)
        if cost is None:
            continue
        h = tvm_ffi.structural_hash(r.workload.mod)
        best = empty if len(r.trace.insts) == 0 else searched
        best[h] = min(best.get(h, float("inf")), cost)
    return {h for h, cost in empty.items() if cost <= searched.get(h, float("inf"))}
