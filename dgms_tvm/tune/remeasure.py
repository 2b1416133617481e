"""``tune.py --remeasure``: measure a model's best records again against their untuned
baselines, for wall-time databases tuned on a machine that was busy at times."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..schedules import tuning_db
from . import tuner
from .driver import run_name


def remeasure(loaded, model: str, bits: int | None, profile, measure, logs_root: Path,
              rounds: int = 5, log=print) -> list[dict]:
    """Measure each of the model's tasks' best record again against its untuned baseline
    (the hand schedule, or TVM's default), the two interleaved over ``rounds`` rounds, and
    keep only those two records for that kernel, with the new figures (the median of the
    rounds); other kernels' records stay as they are. A baseline or a candidate measured
    during a busy moment makes the wrong record win (a baseline measured 10x too slow lets
    any candidate beat it). The run is listed in ``runs.json``. Returns per task {task,
    hand, best} in seconds, as now measured."""
    import tvm
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    from ..kernels import FAMILIES
    from ..schedules.hand import load_knobs

    tuner.light_intrinsics()
    target = profile.tvm_target()
    knobs = load_knobs(profile)
    folder = tuning_db.target_dir(logs_root, profile.name)
    db = tuning_db.open_database(folder)
    runs, _ = tuning_db.read_runs(folder, log)
    strategy = next((r["strategy"] for r in reversed(runs) if r.get("strategy")
                     and (r.get("model"), r.get("bits")) == (run_name(model), bits)), "auto")
    tasks = tuner.extract_tasks(loaded, profile, bits, strategy)
    fresh, measured, out = [], set(), []
    for task in tasks:
        mod = task.workload()
        if not db.has_workload(mod):
            continue
        wl = db.commit_workload(mod)
        best = db.get_top_k(wl, 1)
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
        try:
            for _ in range(rounds):
                for label, (_, path) in built.items():
                    (fut,) = measure.runner.run([ms.runner.RunnerInput(path, "cpu", info)])
                    res = fut.result()
                    if not res.error_msg:
                        times[label].append(float(np.mean([float(s) for s in res.run_secs])))
        finally:
            for _, path in built.values():
                tuner.remove_artifact(path)
        row = {"task": task.name}
        for label, (sch, _) in built.items():
            if not times[label]:
                continue
            row[label] = float(np.median(times[label]))
            fresh.append(ms.database.TuningRecord(sch.trace, wl, [row[label]], target, info))
        measured.add(tvm_ffi.structural_hash(mod))
        row.setdefault("best", row.get("hand"))
        log(f"  {task.name}: untuned {tuner._fmt(row['hand'], measure.name)}, best record "
            f"{tuner._fmt(row['best'], measure.name)}" if row.get("hand")
            else f"  {task.name}: -")
        out.append(row)
    others = [r for r in db.get_all_tuning_records()
              if tvm_ffi.structural_hash(r.workload.mod) not in measured]
    tuning_db.write_database(others + fresh, folder)
    tuning_db.drop_default_wins(folder)
    runs.append({"format": "dgms-tvm-remeasure/1", "model": run_name(model), "bits": bits,
                 "strategy": strategy, "target": profile.name, "measure": measure.name,
                 "remeasured": {"rounds": rounds, "on": measure.device},
                 "tasks": [{"task": r["task"], "hand": r.get("hand"), "best": r.get("best")}
                           for r in out],
                 "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    tuning_db.write_json_atomic(folder / tuning_db.RUNS, runs)
    return out
