"""MetaSchedule tuning of a model's kernels (DGMS build and FP32 baseline): the tasks, the
measure, the design spaces and the search of one task.

Tasks are the distinct PrimFuncs of the fused module ``compiler.prepare`` builds, before any
schedule. A codebook kernel's design space is its hand schedule with every tile size turned
into a sampled decision (``kernels.common.Tiler``) united with MetaSchedule's generic space,
and the hand schedule itself is measured first and put in the database, so the search starts
from it and the best record is never worse than it by the runner's measure. Other fused
kernels (batch norm, pooling, ...) get the generic space, with TVM's default (unscheduled)
version measured first the same way.

Records go to the target's one database (``tuning_db``: any model with the same kernel gets
them); :mod:`.driver` runs a whole model within its budget, :mod:`.remeasure` measures a
model's best records again.

Measures: ``time`` (wall time: x86 here, a real board through its tracker) or
``instructions`` (aarch64 instructions per call counted by the TCG plugin on an emulated
device: deterministic, so the search optimises something that does not jitter). An
instruction count is stored in ``run_secs`` as 1 ns per instruction.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..schedules.apply_records import record_cost

#: How a candidate is measured: wall time (x86 here, or a board), or on an emulated device
#: its instructions per call or its estimated cycles per call (:mod:`dgms_tvm.device.cycles`).
MEASURES = ("time", "instructions", "cycles")


# --- making MetaSchedule affordable on a small machine ---------------------------------------

def light_intrinsics() -> None:
    """Import only the CPU tensor intrinsics. ``TuneContext`` imports all of
    ``tvm.s_tir.tensor_intrin`` (CUDA, ROCm, Hexagon: about a minute here); the CPU rules
    need only ``x86`` and ``arm_cpu``."""
    import importlib
    import logging

    import tvm.s_tir

    # MetaSchedule prints every round's task table; its log files (in the work folder) keep
    # them. Progress here is one line per task.
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        pkg = types.ModuleType(name)
        pkg.__path__ = [os.path.join(os.path.dirname(tvm.s_tir.__file__), "tensor_intrin")]
        sys.modules[name] = pkg
        tvm.s_tir.tensor_intrin = pkg
    for sub in ("x86", "arm_cpu"):
        importlib.import_module(f"{name}.{sub}")


def fast_build(mod, target, _params):
    """The builder's build step without the intrinsics import of the stock one (which each
    fresh builder worker would pay on every batch)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod),
                     target=target)


def export_aarch64(rt_mod) -> str:
    """The builder's export step for a device: an aarch64 ``.so`` it can load directly."""
    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(prefix="dgms-ms-"), "kernel.so")
    rt_mod.export_library(path, fcompile=cc.cross_compiler("aarch64-linux-gnu-g++",
                                                           options=["-O2"]))
    return path


def count_evaluator(session, rt_mod, device, evaluator_config, repeated_args) -> list[float]:
    """``RPCRunner`` evaluator measuring instructions (or, where the environment the tuner
    sets up says ``cycles``, estimated cycles) per call on an emulated device (the key and
    marker library come from that environment too)."""
    from ..device.cycles import estimate
    from ..device.insn import Counter
    from ..measure.counts import per_call as count_per_call

    counter = Counter.from_env(session)
    args = repeated_args[0]

    def factory(n):
        ev = rt_mod.time_evaluator(rt_mod.entry_name, device, number=n, repeat=1)
        return lambda: ev(*args)

    per_call = count_per_call(counter, factory, 1 + max(1, evaluator_config.number))
    mcpu = os.environ.get(Counter.ENV_CYCLES)
    if mcpu:
        if counter.executions is None:
            raise RuntimeError("the device keeps no block log: no cycle estimate")
        per_call = estimate(counter.executions, mcpu).cycles
    return [1e-9 * max(per_call, 1.0)]


# --- tasks ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Task:
    """One distinct kernel of a model's builds."""

    name: str
    func: object  # the PrimFunc before any schedule
    calls: int
    flops: float
    builds: list[str]
    family: str | None  # codebook kernel family, or None

    def workload(self):
        from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

        return _normalize_mod(self.func)


def extract_tasks(loaded, profile, bits: int | None, strategy: str = "auto") -> list[Task]:
    """The distinct kernels of the DGMS build (``strategy`` resolved as compile resolves it:
    the build that compile makes by default) and the FP32 baseline of ``loaded``. Kernels
    without a sampled design space (the GEMV and int8 families) are left out: they keep their
    hand schedules."""
    import tvm
    import tvm_ffi
    from tvm.s_tir.analysis import estimate_tir_flops

    from .. import compiler, strategies
    from ..kernels import FAMILIES
    from ..kernels.common import KERNEL_ATTR

    resolved = strategies.resolve(strategy, profile)
    tasks: dict[int, Task] = {}
    for label, fp32 in ((f"DGMS {bits}-bit", False), ("FP32", True)):
        lowered = compiler.lower(loaded.imported, bits, codebooks=not fp32,
                                 strategy=resolved, profile=profile)
        mod = compiler.prepare(lowered, profile, schedule=False)
        for name in compiler.call_sites(mod):
            func = mod[name]
            h = tvm_ffi.structural_hash(func)
            if h not in tasks:
                try:
                    flops = float(estimate_tir_flops(tvm.IRModule({"main": func})))
                except Exception:  # flops only weigh the budget
                    flops = 0.0
                fam = func.attrs[KERNEL_ATTR] if func.attrs and KERNEL_ATTR in func.attrs \
                    else None
                tasks[h] = Task(name, func, 0, flops, [], None if fam is None else str(fam))
            if tasks[h].family is not None and not searchable(FAMILIES[tasks[h].family]):
                continue  # no design space to search: the hand schedule stays
            t = tasks[h]
            t.calls += 1
            if label not in t.builds:
                t.builds.append(label)
    return [t for t in tasks.values() if t.calls]


def searchable(family) -> bool:
    """Whether a kernel family has a sampled design space (``apply(..., sample=True)`` turns
    its tile sizes into decisions): the GEMV kernels are written already scheduled, and the
    int8 ones have only their hand schedule so far."""
    return family.searchable



def records_of(db, task: Task) -> tuple[int, list[float]]:
    """(trials recorded, valid costs sorted) for ``task`` in ``db``."""
    import tvm_ffi

    wl_mod = task.workload()
    if not db.has_workload(wl_mod):
        return 0, []
    h = tvm_ffi.structural_hash(wl_mod)
    n, costs = 0, []
    for r in db.get_all_tuning_records():
        if tvm_ffi.structural_hash(r.workload.mod) != h:
            continue
        n += 1
        if (cost := record_cost(r)) is not None:
            costs.append(cost)
    return n, sorted(costs)


# --- tuning ---------------------------------------------------------------------------------

@dataclasses.dataclass
class Measure:
    """How candidates are measured: the runner and what its numbers mean."""

    name: str  # "time" | "instructions"
    runner: object
    builder: object
    device: str


def make_measure(profile, measure: str, tracker=None, key: str | None = None,
                 workers: int = 1, workdir: Path | None = None) -> Measure:
    from tvm.s_tir import meta_schedule as ms

    if measure not in MEASURES:
        raise UserError(f"unknown measure {measure!r} (choose from {', '.join(MEASURES)})")
    if not profile.is_arm:
        if measure != "time":
            raise UserError(f"{measure} exist on an emulated device only; "
                            f"{profile.name} is measured by time")
        builder = ms.builder.LocalBuilder(f_build=fast_build, max_workers=profile.num_cores,
                                          timeout_sec=60)
        runner = ms.runner.LocalRunner(evaluator_config=ms.runner.EvaluatorConfig(
            number=5, repeat=3, min_repeat_ms=20, enable_cpu_cache_flush=False))
        return Measure("time", runner, builder, f"this host ({platform.processor() or 'cpu'}, "
                       f"{os.cpu_count()} cores)")
    if tracker is None:
        raise UserError("tuning for an ARM target needs devices: a tracker and key")
    fcompile = profile.cross_compiler()  # noqa: F841 - fails early with the package to install
    builder = ms.builder.LocalBuilder(f_build=fast_build, f_export=export_aarch64,
                                      max_workers=2, timeout_sec=120)
    kwargs = {}
    if measure in ("instructions", "cycles"):
        from ..device.insn import Counter

        Counter.prepare_env(profile, key, workdir, cycles=measure == "cycles")
        kwargs["f_run_evaluator"] = count_evaluator
    runner = ms.runner.RPCRunner(
        ms.runner.RPCConfig(tracker_host=tracker.host, tracker_port=tracker.port,
                            tracker_key=key, session_timeout_sec=600),
        evaluator_config=ms.runner.EvaluatorConfig(number=2, repeat=1, min_repeat_ms=0),
        max_workers=workers, **kwargs)
    return Measure(measure, runner, builder, f"{workers} device(s) under key {key!r} at "
                   f"tracker {tracker}")


def seed_baseline(db, task: Task, target, knobs: dict, measure: Measure) -> float | None:
    """Measure what compile would use without tuning, as the tuner would, and record it: the
    hand schedule of a codebook kernel (its trace replays to exactly the function compile
    builds untuned), TVM's default (no schedule) for the rest. The search
    starts from the database's best, and a tuned record is never worse than this baseline
    by the runner's measure. Returns its cost, or None when it could not be measured."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from ..kernels import FAMILIES

    mod = task.workload()
    sch = tvm.s_tir.Schedule(mod, debug_mask="all")
    if task.family is not None:  # the hand schedule exactly as compile applies it
        FAMILIES[task.family].apply(sch, knobs[task.family])
    (b,) = measure.builder.build([ms.builder.BuilderInput(sch.mod, target)])
    if b.error_msg:
        return None
    info = ms.arg_info.ArgInfo.from_prim_func(sch.mod["main"])
    try:
        (fut,) = measure.runner.run([ms.runner.RunnerInput(b.artifact_path, "cpu", info)])
        res = fut.result()
    finally:  # the builder's temporary folder (the task scheduler removes its own)
        remove_artifact(b.artifact_path)
    if res.error_msg:
        return None
    db.commit_tuning_record(ms.database.TuningRecord(
        sch.trace, db.commit_workload(mod), res.run_secs, target,
        ms.arg_info.ArgInfo.from_prim_func(mod["main"])))
    return float(np.mean([float(s) for s in res.run_secs]))


def remove_artifact(path: str | None) -> None:
    """Remove the temporary folder a builder made for one candidate (``path`` inside it)."""
    if path:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def _hand_space(task: Task, knobs: dict):
    from tvm.s_tir import meta_schedule as ms

    from ..kernels import FAMILIES

    fam = FAMILIES[task.family]

    def fn(sch):
        fam.apply(sch, knobs[task.family], sample=True)

    return ms.space_generator.ScheduleFn(fn)


def space_of(task: Task, knobs: dict):
    from tvm.s_tir import meta_schedule as ms

    from ..kernels import FAMILIES

    if task.family is None:
        return "post-order-apply"
    if not FAMILIES[task.family].generic:  # its own design space only
        return _hand_space(task, knobs)
    return ms.space_generator.SpaceGeneratorUnion(
        [_hand_space(task, knobs), ms.space_generator.PostOrderApply()])


def tune_task(db, task: Task, budget: int, target, knobs: dict, measure: Measure,
              work: Path, per_iter: int = 16, seed: int = 0, cores: int = 1):
    """Bring ``task`` to ``budget`` trials in ``db`` (none if it has them already); the
    untuned baseline (hand schedule, or TVM's default) is measured first.

    Returns
    -------
    (trials recorded, valid costs sorted, the baseline's cost or None)
    """
    from tvm.s_tir import meta_schedule as ms

    light_intrinsics()
    done, costs = records_of(db, task)
    hand = None
    if done == 0 and budget > 0:
        hand = seed_baseline(db, task, target, knobs, measure)
        done, costs = records_of(db, task)
    left = max(0, budget - done)
    if left:
        # MetaSchedule's logger set-up names every handler already on its logger and fails
        # on an unnamed one (as a test runner's capture handler is): leave those out.
        import logging

        lg = logging.getLogger("tvm.s_tir.meta_schedule")
        lg.handlers = [h for h in lg.handlers if h.get_name()]
        with target:
            ms.tune_tir(mod=task.workload(), target=target, work_dir=str(work),
                        max_trials_global=left, num_trials_per_iter=min(per_iter, left),
                        space=space_of(task, knobs), builder=measure.builder,
                        runner=measure.runner, database=db,
                        cost_model=ms.cost_model.XGBModel(
                            extractor=ms.feature_extractor.PerStoreFeature(),
                            adaptive_training=True),
                        seed=seed, num_tuning_cores=cores)
        done, costs = records_of(db, task)
    return done, costs, hand


def _fmt(cost: float, measure: str) -> str:
    if measure in ("instructions", "cycles"):
        return f"{cost * 1e3:.3f} M {'instr' if measure == 'instructions' else 'cycles'}"
    return f"{cost * 1e3:.4f} ms"
