"""One tuning run: every task of a model's DGMS build and FP32 baseline, within ``--trials``
in all, into the target's database, listed in its ``runs.json``; the same command resumes.

A run's entry in ``runs.json`` (rewritten atomically after every task) says what it was
(model, bits, strategy, measure, budget requested and done, seconds, machine, dates) and,
per task, how many records the database held before the run began it (``base``): a task's
budget is trials of this run, on top of what other runs (of this model or of another one
with the same kernel) left. A run stopped halfway has ``finished: null``; the same command
finds that entry and goes on. When ``runs.json`` is torn (a version that wrote it in place),
it is set aside with a warning and the run rebuilds its progress from the database: the
records there count as done.
"""

from __future__ import annotations

import platform
import sys
import tempfile
import time
from pathlib import Path

from ..errors import UserError
from ..schedules import tuning_db
from . import tuner
from .budget import budgets, check_trials, plan_note

FORMAT = "dgms-tvm-tuning-run/1"


def tune(loaded, model: str, bits: int | None, profile, trials: int, measure, logs_root: Path,
         per_iter: int = 16, seed: int = 0, log=print, strategy: str = "auto") -> dict:
    """Tune ``loaded``'s tasks for ``profile`` into ``logs_root/<target>/``.

    Raises
    ------
    UserError
        A bad ``trials`` / ``per_iter``, or a database of another measure.

    Returns
    -------
    dict
        This run's entry in ``runs.json``.
    """
    import logging

    from tqdm import tqdm

    from ..schedules.hand import load_knobs
    from ..strategies import resolve as resolve_strategy

    check_trials(trials, per_iter)
    folder = tuning_db.target_dir(logs_root, profile.name)
    db = tuning_db.open_database(folder, create=True)
    runs, torn = tuning_db.read_runs(folder, log)
    have = tuning_db.measure_of(runs)
    if have not in (None, measure.name):
        raise UserError(f"{folder} holds records measured by {have}; tune into another "
                        f"--tuning-logs folder to use {measure.name}")
    tuner.light_intrinsics()
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    target = profile.tvm_target()
    knobs = load_knobs(profile)
    resolved = resolve_strategy(strategy, profile)
    tasks = tuner.extract_tasks(loaded, profile, bits, resolved)
    weights = [t.flops * t.calls for t in tasks]
    plan = budgets(weights, trials, per_iter)
    if note := plan_note(weights, plan, per_iter):
        log(note)
    entry = _resume(runs, model, bits, resolved, measure.name, trials, per_iter)
    if entry is None:
        entry = _new_entry(model, bits, profile, measure, trials, per_iter, resolved)
        runs.append(entry)
    earlier = {t["task"]: t for t in entry["tasks"]}
    spent, t0 = float(entry["seconds"]), time.perf_counter()
    summary = []
    with tempfile.TemporaryDirectory(prefix="dgms-tune-") as work:  # MetaSchedule's logs
        bar = tqdm(list(zip(tasks, plan, strict=True)), desc="tasks", file=sys.stderr)
        for task, budget in bar:
            done, costs = tuner.records_of(db, task)
            # Records already there count as done when the bookkeeping was lost.
            base = earlier[task.name]["base"] if task.name in earlier else (0 if torn else done)
            bar.set_postfix_str(f"{task.name[:40]}: {done - base}/{budget} trials")
            hand = None
            if budget:
                done, costs, hand = tuner.tune_task(db, task, base + budget, target, knobs,
                                                    measure, Path(work), per_iter, seed,
                                                    profile.num_cores)
            hand = hand if hand is not None else earlier.get(task.name, {}).get("hand")
            ran = max(0, done - base)
            if budget:
                tqdm.write(f"  {task.name}: {ran} trials" + (
                    f", best {tuner._fmt(costs[0], measure.name)}" if costs else
                    ", no valid record") + (
                    f" (untuned {tuner._fmt(hand, measure.name)})" if hand else ""),
                    file=sys.stderr)
            summary.append({"task": task.name, "builds": task.builds, "calls": task.calls,
                            "base": base, "trials": ran, "budget": budget,
                            "best": costs[0] if costs else None, "hand": hand})
            entry.update(tasks=summary + [t for t in entry["tasks"] if t["task"] not in
                                          {s["task"] for s in summary}],
                         seconds=round(spent + time.perf_counter() - t0, 1))
            entry["total_trials"] = sum(t["trials"] for t in entry["tasks"])
            tuning_db.write_json_atomic(folder / tuning_db.RUNS, runs)  # after every task
    entry["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    tuning_db.write_json_atomic(folder / tuning_db.RUNS, runs)
    tuning_db.compact(folder)  # MetaSchedule appended its workloads indented
    return entry


def _resume(runs, model, bits, strategy, measure, trials, per_iter) -> dict | None:
    """The unfinished entry of the same command, if any."""
    for r in reversed(runs):
        if r.get("finished") is None and (r.get("model"), r.get("bits"), r.get("strategy"),
                                          r.get("measure"), r.get("trials_requested"),
                                          r.get("per_iter")) == (
                run_name(model), bits, strategy, measure, trials, per_iter):
            r.setdefault("tasks", [])
            r.setdefault("seconds", 0.0)
            return r
    return None


def run_name(model: str) -> str:
    """A model's name in the run list: a file's stem, a built-in model's name."""
    return Path(model).stem if Path(model).suffix in (".onnx", ".pt2") else model


def _new_entry(model, bits, profile, measure, trials, per_iter, strategy: str) -> dict:
    return {"format": FORMAT, "model": run_name(model), "bits": bits,
            "strategy": strategy,  # of the DGMS build whose kernels were tuned
            "target": profile.name, "measure": measure.name,
            "run_secs_unit": {"instructions": "1e-9 per aarch64 instruction",
                              "cycles": "1e-9 per estimated cycle (llvm-mca model of "
                                        f"{profile.mcpu})"}.get(measure.name, "seconds"),
            "measured_on": measure.device, "machine": platform.machine(),
            "trials_requested": trials, "per_iter": per_iter, "total_trials": 0,
            "seconds": 0.0, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "finished": None, "tasks": []}
