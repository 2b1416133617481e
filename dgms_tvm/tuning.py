"""MetaSchedule tuning of a model's kernels (DGMS build and FP32 baseline), kept per target.

Tasks are the distinct PrimFuncs of the fused module ``compiler.prepare`` builds, before any
schedule. A codebook kernel's design space is its hand schedule with every tile size turned
into a sampled decision (``kernels.common.Tiler``) united with MetaSchedule's generic space,
and the hand schedule itself is measured first and put in the database, so the search starts
from it and the best record is never worse than it by the runner's measure. Other fused
kernels (batch norm, pooling, ...) get the generic space, with TVM's default (unscheduled)
version measured first the same way.

Records live in MetaSchedule's own JSON database,
``tuning_logs/<target>/<model>-w<bits>/database_{workload,tuning_record}.json``, with a
``tuning.json`` beside it saying what measured them. Both files are append-only JSON lines;
a run killed halfway leaves them loadable (a torn last line is dropped on load), and the
same command run again tunes only what each task still lacks.

Measures: ``time`` (wall time: x86 here, a real board through its tracker) or
``instructions`` (aarch64 instructions per call counted by the TCG plugin on an emulated
device: deterministic, so the search optimises something that does not jitter). An
instruction count is stored in ``run_secs`` as 1 ns per instruction.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

from .errors import UserError

DB_FILES = ("database_workload.json", "database_tuning_record.json")
META = "tuning.json"
DEFAULT_LOGS = Path(__file__).resolve().parent.parent / "tuning_logs"
MEASURES = ("time", "instructions")


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
    """``RPCRunner`` evaluator measuring instructions per call on an emulated device (the
    key and marker library come from the environment the tuner sets up)."""
    from .bench_device import SMALL_KERNEL
    from .device.insn import Counter

    counter = Counter.from_env(session)
    args = repeated_args[0]
    n2 = 1 + max(1, evaluator_config.number)

    def factory(n):
        ev = rt_mod.time_evaluator(rt_mod.entry_name, device, number=n, repeat=1)
        return lambda: ev(*args)

    per_call = counter.per_call(factory, 1, n2)
    if per_call < SMALL_KERNEL:  # a few thousand instructions of RPC noise: average more
        per_call = counter.per_call(factory, 1, 1 + min(100, int(SMALL_KERNEL / max(per_call,
                                                                                   1e4))))
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


def model_key(model: str, bits: int | None) -> str:
    stem = Path(model).stem if Path(model).suffix in (".onnx", ".pt2") else model
    return f"{stem}-w{bits}"


def log_dir(root: Path, target: str, model: str, bits: int | None) -> Path:
    return Path(root) / target / model_key(model, bits)


def extract_tasks(loaded, profile, bits: int | None, strategy: str = "auto") -> list[Task]:
    """The distinct kernels of the DGMS build (``strategy`` resolved as compile resolves it:
    the build that compile makes by default) and the FP32 baseline of ``loaded``. Kernels
    without a sampled design space (the GEMV and int8 families) are left out: they keep their
    hand schedules."""
    import tvm
    import tvm_ffi
    from tvm.s_tir.analysis import estimate_tir_flops

    from . import compiler
    from .kernels import FAMILIES
    from .kernels.common import KERNEL_ATTR

    resolved = compiler.resolve_strategy(strategy, profile)
    tasks: dict[int, Task] = {}
    for label, fp32 in ((f"DGMS {bits}-bit", False), ("FP32", True)):
        lowered = compiler.lower(loaded.imported, bits, codebooks=not fp32,
                                 strategy=resolved, target=profile.tvm_target())
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
    return family.apply is not None and getattr(family, "SEARCHABLE", True)


def budgets(tasks: list[Task], trials: int, per_iter: int) -> list[int]:
    """Trials per task: in proportion to flops x calls, at least one batch for every kernel
    that computes anything; none for pure data movement (reshape, ...)."""
    weights = [t.flops * t.calls for t in tasks]
    total = sum(weights) or 1.0
    out = []
    for w in weights:
        out.append(0 if w <= 0 else max(per_iter, round(trials * w / total)))
    return out


# --- the database ---------------------------------------------------------------------------

def repair(folder: Path) -> int:
    """Drop lines of the database files that are not whole JSON (a kill mid-write). Returns
    how many were dropped."""
    dropped = 0
    for name in DB_FILES:
        path = Path(folder) / name
        if not path.exists():
            continue
        good = []
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                json.loads(line)
                good.append(line)
            except json.JSONDecodeError:
                dropped += 1
        if dropped:
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(g + "\n" for g in good))
            os.replace(tmp, path)
    return dropped


def open_database(folder: Path, create: bool = False):
    """MetaSchedule's JSON database in ``folder`` (repaired first).

    Raises
    ------
    UserError
        The files do not load (not a MetaSchedule database).
    """
    from tvm.s_tir import meta_schedule as ms

    folder = Path(folder)
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    repair(folder)
    try:
        return ms.database.JSONDatabase(work_dir=str(folder), allow_missing=create)
    except Exception as err:  # any load failure is a bad log
        first = (str(err).strip().splitlines() or [type(err).__name__])[-1]
        raise UserError(f"tuning logs in {folder} do not load: {first[:160]}") from None


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
        secs = [float(s) for s in (r.run_secs or [])]
        if secs and all(s < 1e9 for s in secs):
            costs.append(float(np.mean(secs)))
    return n, sorted(costs)


# --- applying records -----------------------------------------------------------------------

def apply_database(mod, db, target, knobs: dict) -> tuple[object, dict[str, str]]:
    """Every PrimFunc of a prepared-but-unscheduled module gets its tuned schedule when the
    database holds one, else the hand schedule (codebook kernels) or none (TVM's default).

    Returns
    -------
    (IRModule, {function name: "tuned" | "hand" | "default"})
    """
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from .kernels import FAMILIES
    from .kernels.common import KERNEL_ATTR

    funcs, how = dict(mod.functions_items()), {}
    untuned_best = _untuned_wins(db) if db is not None else set()
    for gv, func in list(funcs.items()):
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        sch = None
        if db is not None:
            with target:
                sch = ms.tir_integration.compile_tir(db, func, target)
            if sch is not None and _workload_hash(func) in untuned_best:
                sch = None  # TVM's default measured better than every searched schedule
        fam = str(func.attrs[KERNEL_ATTR]) if func.attrs and KERNEL_ATTR in func.attrs \
            else None
        if sch is not None:
            new = sch.mod["main"].without_attr("global_symbol")
            funcs[gv] = new.with_attr("tirx.is_scheduled", True)
            how[gv.name_hint] = "tuned"
        elif fam is not None:
            funcs[gv] = FAMILIES[fam].schedule(func, knobs[fam])
            how[gv.name_hint] = "hand"
        else:
            how[gv.name_hint] = "default"
    return tvm.IRModule(funcs, attrs=mod.attrs), how


def _workload_hash(func) -> int:
    import tvm_ffi
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    return tvm_ffi.structural_hash(_normalize_mod(func))


def _untuned_wins(db) -> set[int]:
    """Workloads (structural hashes) whose best record is the untuned baseline with an empty
    trace (TVM's default, what :func:`seed_baseline` records for a kernel without a hand
    schedule).

    MetaSchedule counts a record with an empty trace as invalid: its queries skip it and
    return the best *searched* schedule, even one measured slower than the baseline (a
    cortex-a72 BatchNorm kernel: baseline 2.1 M instructions, best searched 11.5 M). Such a
    kernel must keep TVM's default.
    """
    import tvm_ffi

    empty, searched = {}, {}
    for r in db.get_all_tuning_records():
        secs = [float(v) for v in (r.run_secs or [])]
        if not secs or not all(v < 1e9 for v in secs):
            continue
        h = tvm_ffi.structural_hash(r.workload.mod)
        best = empty if len(r.trace.insts) == 0 else searched
        best[h] = min(best.get(h, float("inf")), float(np.mean(secs)))
    return {h for h, cost in empty.items() if cost <= searched.get(h, float("inf"))}


def load_logs(root: Path | None, target: str, model: str, bits: int | None, log=print):
    """The database for (target, model, bits) under ``root``, or None: no logs there, or
    logs that do not load (a warning, then an untuned build)."""
    if root is None:
        return None, None
    folder = log_dir(root, target, model, bits)
    if not (folder / DB_FILES[1]).exists():
        return None, None
    try:
        return open_database(folder), folder
    except UserError as err:
        log(f"warning: {err}; building without them")
        return None, folder


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
            raise UserError("instruction counts exist on an emulated device only; "
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
    if measure == "instructions":
        from .device.insn import Counter

        Counter.prepare_env(profile, key, workdir)
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

    from .kernels import FAMILIES

    mod = task.workload()
    sch = tvm.s_tir.Schedule(mod, debug_mask="all")
    if task.family is not None:  # the hand schedule exactly as compile applies it
        FAMILIES[task.family].apply(sch, knobs[task.family])
    (b,) = measure.builder.build([ms.builder.BuilderInput(sch.mod, target)])
    if b.error_msg:
        return None
    info = ms.arg_info.ArgInfo.from_prim_func(sch.mod["main"])
    (fut,) = measure.runner.run([ms.runner.RunnerInput(b.artifact_path, "cpu", info)])
    res = fut.result()
    if res.error_msg:
        return None
    db.commit_tuning_record(ms.database.TuningRecord(
        sch.trace, db.commit_workload(mod), res.run_secs, target,
        ms.arg_info.ArgInfo.from_prim_func(mod["main"])))
    return float(np.mean([float(s) for s in res.run_secs]))


def _hand_space(task: Task, knobs: dict):
    from tvm.s_tir import meta_schedule as ms

    from .kernels import FAMILIES

    fam = FAMILIES[task.family]

    def fn(sch):
        fam.apply(sch, knobs[task.family], sample=True)

    return ms.space_generator.ScheduleFn(fn)


def space_of(task: Task, knobs: dict):
    from tvm.s_tir import meta_schedule as ms

    if task.family is None:
        return "post-order-apply"
    return ms.space_generator.SpaceGeneratorUnion(
        [_hand_space(task, knobs), ms.space_generator.PostOrderApply()])


def tune(loaded, model: str, bits: int | None, profile, trials: int, measure: Measure,
         logs_root: Path, per_iter: int = 16, seed: int = 0, log=print,
         strategy: str = "auto") -> dict:
    """Tune every task of the model's DGMS build and FP32 baseline; resume what is there.

    Returns
    -------
    dict
        The ``tuning.json`` written beside the database.
    """
    import logging

    from tqdm import tqdm

    from .schedules import load_knobs

    light_intrinsics()
    # MetaSchedule prints every round's task table; its log files (in the work folder) keep
    # them. Progress here is one line per task.
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    target = profile.tvm_target()
    knobs = load_knobs(profile.name)
    folder = log_dir(logs_root, profile.name, model, bits)
    db = open_database(folder, create=True)
    meta_path = folder / META
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if meta.get("measure") not in (None, measure.name):
        raise UserError(f"{folder} holds records measured by {meta['measure']}; tune into "
                        f"another --tuning-logs folder to use {measure.name}")
    from .compiler import resolve_strategy

    resolved = resolve_strategy(strategy, profile)
    tasks = extract_tasks(loaded, profile, bits, resolved)
    plan = budgets(tasks, trials, per_iter)
    work = Path(tempfile.mkdtemp(prefix="dgms-tune-"))  # MetaSchedule's own logs
    log(f"MetaSchedule logs: {work}/logs")
    t0 = time.perf_counter()
    spent = float(meta.get("seconds", 0.0))
    # A resumed run does not measure the baseline of a task begun before (its record is in
    # the database already): keep the figure the earlier run wrote.
    earlier = {t["task"]: t.get("hand") for t in meta.get("tasks", [])}
    summary = []
    bar = tqdm(list(zip(tasks, plan, strict=True)), desc="tasks", file=sys.stderr)
    for task, budget in bar:
        done, costs = records_of(db, task)
        bar.set_postfix_str(f"{task.name[:40]}: {done}/{budget} trials" + (
            f", best {_fmt(costs[0], measure.name)}" if costs else ""))
        done, costs, hand = tune_task(db, task, budget, target, knobs, measure, work,
                                      per_iter, seed, profile.num_cores)
        hand = hand if hand is not None else earlier.get(task.name)
        tqdm.write(f"  {task.name}: {done} trials" + (
            f", best {_fmt(costs[0], measure.name)}" if costs else ", no valid record")
            + (f" (untuned {_fmt(hand, measure.name)})" if hand else ""),
            file=sys.stderr)
        summary.append({"task": task.name, "builds": task.builds, "calls": task.calls,
                        "trials": done, "budget": budget,
                        "best": costs[0] if costs else None, "hand": hand})
        meta = _meta(model, bits, profile, measure, trials, spent + time.perf_counter() - t0,
                     summary, resolved)
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")  # after every task
    return meta


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
    return f"{cost * 1e3:.3f} M instr" if measure == "instructions" else f"{cost * 1e3:.4f} ms"


def _meta(model, bits, profile, measure: Measure, trials, seconds, summary,
          strategy: str) -> dict:
    return {"format": "dgms-tvm-tuning/1", "model": model, "bits": bits,
            "strategy": strategy,  # of the DGMS build whose kernels were tuned
            "target": profile.name, "measure": measure.name,
            "run_secs_unit": ("1e-9 per aarch64 instruction" if measure.name == "instructions"
                              else "seconds"),
            "measured_on": measure.device, "machine": platform.machine(),
            "trials_requested": trials, "seconds": round(seconds, 1),
            "tasks": summary, "total_trials": sum(s["trials"] for s in summary),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S")}



# --- re-measuring ---------------------------------------------------------------------------

def remeasure(loaded, model: str, bits: int | None, profile, measure: Measure,
              logs_root: Path, rounds: int = 5, log=print) -> list[dict]:
    """Measure each task's best record again against its untuned baseline (the hand schedule,
    or TVM's default), the two interleaved over ``rounds`` rounds, and keep only those two
    records per task, with the new figures (the median of the rounds). For wall-time logs
    tuned on a machine that was busy at times: a baseline or a candidate measured during a
    busy moment makes the wrong record win (a baseline measured 10x too slow lets any
    candidate beat it). Returns per task {task, hand, best} in seconds, as now measured."""
    import shutil

    import tvm
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    from .kernels import FAMILIES
    from .schedules import load_knobs

    light_intrinsics()
    target = profile.tvm_target()
    knobs = load_knobs(profile.name)
    folder = log_dir(logs_root, profile.name, model, bits)
    db = open_database(folder)
    meta_path = folder / META
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    tasks = extract_tasks(loaded, profile, bits, meta.get("strategy", "auto"))
    fresh_dir = Path(tempfile.mkdtemp(prefix="dgms-remeasure-"))
    fresh = ms.database.JSONDatabase(work_dir=str(fresh_dir), allow_missing=True)
    out = []
    for task in tasks:
        mod = task.workload()
        if not db.has_workload(mod):
            continue
        best = db.get_top_k(db.commit_workload(mod), 1)
        hand = tvm.s_tir.Schedule(mod)
        if task.family is not None:
            FAMILIES[task.family].apply(hand, knobs[task.family])
        cands = {"hand": hand}
        if best:
            sch = tvm.s_tir.Schedule(mod)
            try:
                best[0].trace.apply_to_schedule(sch, remove_postproc=False)
            except Exception:  # a record that no longer replays: the baseline stays
                sch = None
            if sch is not None and not tvm_ffi.structural_equal(sch.mod, hand.mod):
                cands["best"] = sch
        built = {}
        for label, sch in cands.items():
            (b,) = measure.builder.build([ms.builder.BuilderInput(sch.mod, target)])
            if not b.error_msg:
                built[label] = (sch, b.artifact_path)
        times: dict[str, list[float]] = {label: [] for label in built}
        info = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
        for _ in range(rounds):
            for label, (_, path) in built.items():
                (fut,) = measure.runner.run([ms.runner.RunnerInput(path, "cpu", info)])
                res = fut.result()
                if not res.error_msg:
                    times[label].append(float(np.mean([float(s) for s in res.run_secs])))
        row = {"task": task.name}
        for label, (sch, _) in built.items():
            if not times[label]:
                continue
            row[label] = float(np.median(times[label]))
            fresh.commit_tuning_record(ms.database.TuningRecord(
                sch.trace, fresh.commit_workload(mod), [row[label]], target, info))
        row.setdefault("best", row.get("hand"))
        log(f"  {task.name}: untuned {_fmt(row['hand'], measure.name)}, best record "
            f"{_fmt(row['best'], measure.name)}" if row.get("hand") else f"  {task.name}: -")
        out.append(row)
    for name in DB_FILES:
        shutil.copy(fresh_dir / name, folder / name)
    drop_default_wins(folder)
    if meta:
        meta["remeasured"] = {"rounds": rounds, "on": measure.device,
                              "tasks": {r["task"]: {"hand": r.get("hand"), "best": r.get("best")}
                                        for r in out}}
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return out


def drop_default_wins(folder: Path) -> int:
    """Rewrite the database in ``folder`` without the workloads whose best record is TVM's
    default (:func:`_untuned_wins`): compile keeps the default for them whatever their
    records say, so they only weigh the shipped files (a MobileNetV2 database: 3.7 of its
    6.4 MB). Returns how many workloads were dropped."""
    import shutil

    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    db = open_database(folder)
    wins = _untuned_wins(db)
    if not wins:
        return 0
    fresh_dir = Path(tempfile.mkdtemp(prefix="dgms-prune-"))
    fresh = ms.database.JSONDatabase(work_dir=str(fresh_dir), allow_missing=True)
    for r in db.get_all_tuning_records():
        if tvm_ffi.structural_hash(r.workload.mod) not in wins:
            fresh.commit_tuning_record(ms.database.TuningRecord(
                r.trace, fresh.commit_workload(r.workload.mod), r.run_secs, r.target,
                r.args_info))
    for name in DB_FILES:
        shutil.copy(fresh_dir / name, Path(folder) / name)
    return len(wins)
