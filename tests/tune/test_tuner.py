"""MetaSchedule tuning on this host: a tiny run writes records that compile applies (the
applied kernel is the tuned one and matches the oracle), a killed run leaves a database that
loads and resumes, and corrupt or mismatched logs give a warning and an untuned build."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tvm
import tvm_ffi

from dgms_tvm import pipeline
from dgms_tvm.kernels.fp32 import dense
from dgms_tvm.schedules import apply_records, load_knobs, tuning_db
from dgms_tvm.targets import get_profile
from dgms_tvm.tune import driver, remeasure, tuner
from tests.helpers import random_codebook_weight, rel_err, run_kernel

SPEC = dense.DenseSpec(2, 32, 64, bits=4)
REPO = Path(__file__).resolve().parents[2]


def dense_task(spec=SPEC) -> tuner.Task:
    func = dense.compute(spec)
    return tuner.Task(spec.name, func, 1, 2.0 * spec.m * spec.n * spec.k, ["DGMS 4-bit"],
                      dense.FAMILY)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    folder = tmp_path_factory.mktemp("logs")
    profile = get_profile("x86")
    db = tuning_db.open_database(folder, create=True)
    measure = tuner.make_measure(profile, "time")
    done, costs, hand = tuner.tune_task(db, dense_task(), 4, profile.tvm_target(),
                                        load_knobs("x86"), measure,
                                        tmp_path_factory.mktemp("work"), per_iter=4)
    return folder, done, costs, hand


def test_tiny_run_writes_records_that_compile_applies(tuned, rng):
    folder, done, costs, hand = tuned
    assert done == 4 and costs and hand is not None
    assert costs[0] <= hand  # the hand schedule is in the database: the best is no worse
    assert all((folder / f).exists() for f in tuning_db.DB_FILES)
    db = tuning_db.open_database(folder)
    func = dense.compute(SPEC)
    mod, how = apply_records.apply_database(tvm.IRModule({"k": func}), db,
                                            get_profile("x86").tvm_target(), load_knobs("x86"))
    assert how == {"k": "tuned"}
    applied = mod["k"]
    assert not tvm_ffi.structural_equal(applied, func)  # not the untuned function
    assert applied.attrs["tirx.is_scheduled"]
    cw = random_codebook_weight(rng, SPEC.weight_shape, SPEC.bits)
    x = rng.normal(size=(SPEC.m, SPEC.k)).astype(np.float32)
    got = run_kernel(applied, [x, cw.packed, cw.codebook, np.zeros(SPEC.out_shape,
                                                                   np.float32)])
    assert rel_err(got, dense.reference(SPEC, x, cw.dense())) < 1e-5


def test_kernels_without_a_record_keep_their_hand_schedule(tuned):
    folder = tuned[0]
    other = dense.compute(dense.DenseSpec(1, 16, 48, bits=2))
    mod, how = apply_records.apply_database(tvm.IRModule({"o": other}),
                                            tuning_db.open_database(folder),
                                            get_profile("x86").tvm_target(), load_knobs("x86"))
    assert how == {"o": "hand"}
    hand = dense.schedule(other, load_knobs("x86")["cb_dense"])
    assert tvm_ffi.structural_equal(mod["o"], hand)


CHILD = """
import sys
from pathlib import Path
from dgms_tvm.tune import tuner
from dgms_tvm.schedules import tuning_db
from dgms_tvm.schedules import load_knobs
from dgms_tvm.targets import get_profile
from tests.tune.test_tuner import dense_task
p = get_profile("x86")
db = tuning_db.open_database(Path(sys.argv[1]), create=True)
tuner.tune_task(db, dense_task(), 64, p.tvm_target(), load_knobs("x86"),
                tuner.make_measure(p, "time"), Path(sys.argv[2]), per_iter=4)
"""


def test_killed_run_leaves_a_loadable_database_and_resumes(tmp_path):
    logs, work = tmp_path / "logs", tmp_path / "work"
    work.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(logs), str(work)], cwd=REPO,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    records = logs / tuning_db.DB_FILES[1]
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if records.exists() and len(records.read_text().splitlines()) >= 5:
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the tuning run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # A record cut in half by the kill is dropped on load, nothing else.
    with open(records, "a") as f:
        f.write('[0, [["torn')
    db = tuning_db.open_database(logs)
    done, costs = tuner.records_of(db, dense_task())
    assert 5 <= done < 64 and costs
    profile = get_profile("x86")
    done2, _, hand = tuner.tune_task(db, dense_task(), done + 4, profile.tvm_target(),
                                     load_knobs("x86"), tuner.make_measure(profile, "time"),
                                     work, per_iter=4)
    assert done2 == done + 4  # resumed: four more trials, not a fresh start
    assert hand is None  # the hand schedule was measured by the first run already


@pytest.fixture(scope="module")
def digitnet():
    return pipeline.load_model("digitnet", 4, 0)


def _compile(digitnet, logs, tmp_path, capsys):
    out = tmp_path / "art"
    manifest = pipeline.compile_model("digitnet", "x86", out, 4, loaded=digitnet, quiet=True,
                                      tuning_logs=logs, strategy="exact")
    x = digitnet.example(0)
    (got,) = pipeline.run_artifact(out, [x])
    import torch

    want = digitnet.torch_model(torch.from_numpy(x)).detach().numpy()
    assert rel_err(got, want) < 1e-4
    return manifest, capsys.readouterr().err


def test_corrupt_logs_warn_and_build_untuned(digitnet, tmp_path, capsys):
    folder = tuning_db.target_dir(tmp_path / "logs", "x86")
    folder.mkdir(parents=True)
    for name in tuning_db.DB_FILES:
        (folder / name).write_text('["not", "a workload"]\n')
    manifest, err = _compile(digitnet, tmp_path / "logs", tmp_path, capsys)
    assert "warning: tuning logs in" in err and "do not load" in err
    assert manifest["tuning"]["logs"] is None and manifest["tuning"]["tuned"] == 0


def test_mismatched_logs_warn_and_build_untuned(digitnet, tuned, tmp_path, capsys):
    folder = tuning_db.target_dir(tmp_path / "logs", "x86")
    folder.mkdir(parents=True)
    for name in tuning_db.DB_FILES:  # records of another kernel only
        (folder / name).write_bytes((tuned[0] / name).read_bytes())
    manifest, err = _compile(digitnet, tmp_path / "logs", tmp_path, capsys)
    assert "no record" in err and "matches a kernel of this build" in err
    assert manifest["tuning"]["tuned"] == 0
    assert set(manifest["tuning"]["kernels"].values()) <= {"hand", "default"}


def test_task_extraction_covers_both_builds(digitnet):
    tasks = tuner.extract_tasks(digitnet, get_profile("x86"), 4, "exact")
    names = [t.name for t in tasks]
    assert any(n.startswith("cb_conv2d") for n in names)
    assert any(n.startswith("fp32_conv2d") and "c32" in n for n in names)  # FP32 baseline
    assert sum(t.family is not None for t in tasks) >= 6
    from dgms_tvm.tune.budget import budgets

    computing = sum(t.flops > 0 for t in tasks)
    plan = budgets([t.flops * t.calls for t in tasks], 8 * computing + 10, 8)
    assert sum(plan) == 8 * computing + 10  # enough for a round each: every kernel gets one
    assert all(b == 0 for t, b in zip(tasks, plan, strict=True) if t.flops == 0)
    assert all(b >= 8 for t, b in zip(tasks, plan, strict=True) if t.flops > 0)


def test_tasks_follow_the_build_compile_makes(digitnet):
    """On a dotprod core compile's default (auto) is the int8 build: its conv kernels have no
    sampled space (hand schedules stay), so the tasks are the FP32 baseline's kernels and the
    int8 build's other kernels, not the exact build's codebook convs that would never run."""
    n1 = get_profile("neoverse-n1")
    auto = {t.name: t for t in tuner.extract_tasks(digitnet, n1, 4)}
    exact = {t.name for t in tuner.extract_tasks(digitnet, n1, 4, "exact")}
    assert not any(n.startswith(("cb_conv2d", "q8_")) for n in auto)
    assert any(n.startswith("cb_conv2d") for n in exact)
    assert any("DGMS 4-bit" in t.builds for t in auto.values())  # pooling, batch norm, ...
    assert any(n.startswith("fp32_conv2d") for n in auto)


def test_measure_choice_errors():
    from dgms_tvm.errors import UserError

    with pytest.raises(UserError, match="emulated device only"):
        tuner.make_measure(get_profile("x86"), "instructions")
    with pytest.raises(UserError, match="needs devices"):
        tuner.make_measure(get_profile("cortex-a72"), "time")
    with pytest.raises(UserError, match="unknown measure"):
        tuner.make_measure(get_profile("x86"), "joules")


def test_run_entry_says_what_measured(tmp_path):
    profile = get_profile("x86")
    m = tuner.make_measure(profile, "time")
    meta = driver._new_entry("digitnet", 4, profile, m, 10, 8, "exact")
    assert meta["measure"] == "time" and meta["run_secs_unit"] == "seconds"
    assert meta["strategy"] == "exact" and meta["trials_requested"] == 10
    json.dumps(meta)


def test_other_kernels_are_tuned_against_tvms_default(tmp_path):
    from tvm import te

    a = te.placeholder((64, 64), name="a")
    b = te.compute((64, 64), lambda i, j: te.max(a[i, j] * 2.0, 0.0), name="b")
    func = te.create_prim_func([a, b])
    task = tuner.Task("relu2", func, 1, 64 * 64.0, ["FP32"], None)
    profile = get_profile("x86")
    db = tuning_db.open_database(tmp_path / "logs", create=True)
    done, costs, base = tuner.tune_task(db, task, 3, profile.tvm_target(), load_knobs("x86"),
                                        tuner.make_measure(profile, "time"), tmp_path,
                                        per_iter=2)
    assert base is not None and done >= 1 and costs[0] <= base
    mod, how = apply_records.apply_database(tvm.IRModule({"r": func}), db,
                                            profile.tvm_target(), load_knobs("x86"))
    # A searched schedule is applied only where it measured faster than TVM's default
    # (whose record has an empty trace); which one won depends on this run's timings.
    searched = [float(np.mean([float(v) for v in r.run_secs]))
                for r in db.get_all_tuning_records() if len(r.trace.insts)]
    assert how == {"r": "tuned" if searched and min(searched) < base else "default-measured"}
    x = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    got = run_kernel(mod["r"], [x, np.zeros((64, 64), np.float32)])
    assert rel_err(got, np.maximum(2 * x, 0)) < 1e-6


def test_resumed_run_keeps_the_baselines_measured_before(tmp_path, monkeypatch):
    """A task finished before a kill has its baseline record in the database, so the resumed
    run does not measure it again; tuner.json keeps the earlier figure, not null."""
    profile = get_profile("x86")
    task = dense_task()
    folder = tuning_db.target_dir(tmp_path, "x86")
    folder.mkdir(parents=True)
    (folder / tuning_db.RUNS).write_text(json.dumps([{
        "model": "digitnet", "bits": 4, "strategy": "exact", "measure": "time",
        "trials_requested": 8, "per_iter": 16, "finished": None, "seconds": 5.0,
        "tasks": [{"task": task.name, "base": 0, "hand": 2.5e-3}]}]))
    monkeypatch.setattr(tuner, "extract_tasks", lambda *a: [task])
    monkeypatch.setattr(tuner, "tune_task", lambda *a, **k: (8, [1e-3], None))
    meta = driver.tune(None, "digitnet", 4, profile, 8,
                       tuner.make_measure(profile, "time"), tmp_path, log=lambda m: None,
                       strategy="exact")
    assert meta["tasks"][0]["hand"] == 2.5e-3 and meta["seconds"] >= 5.0
    (entry,) = json.loads((folder / tuning_db.RUNS).read_text())  # resumed, not a new run
    assert entry["tasks"][0]["hand"] == 2.5e-3 and entry["finished"]


def test_untuned_baseline_better_than_every_searched_record_is_kept(tmp_path):
    """MetaSchedule ignores a record with an empty trace (TVM's default, our baseline for a
    kernel without a hand schedule) and would apply the best searched record even when it
    was measured slower. Compile must keep the default then, and apply a faster search."""
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    a = te.placeholder((64, 64), name="a")
    b = te.compute((64, 64), lambda i, j: te.max(a[i, j] * 2.0, 0.0), name="b")
    func = te.create_prim_func([a, b])
    wl_mod = tuner.Task("relu2", func, 1, 64 * 64.0, ["FP32"], None).workload()
    target = get_profile("x86").tvm_target()
    db = tuning_db.open_database(tmp_path / "logs", create=True)
    wl = db.commit_workload(wl_mod)
    info = ms.arg_info.ArgInfo.from_prim_func(wl_mod["main"])
    empty = tvm.s_tir.Schedule(wl_mod)
    searched = tvm.s_tir.Schedule(wl_mod)
    _, j = searched.get_loops(searched.get_sblock("b"))
    searched.vectorize(searched.split(j, [None, 8])[1])

    def commit(sch, secs):
        db.commit_tuning_record(ms.database.TuningRecord(sch.trace, wl, [secs], target, info))

    commit(empty, 1e-3)
    commit(searched, 5e-3)
    (top,) = db.get_top_k(wl, 1)
    assert len(top.trace.insts) > 0  # the premise: the query skips the faster empty record
    knobs = load_knobs("x86")
    _, how = apply_records.apply_database(tvm.IRModule({"r": func}), db, target, knobs)
    assert how == {"r": "default-measured"}  # TVM's default, which its record measured best
    # such a workload only weighs the files: dropping it leaves compile's choice as it was
    import shutil

    kept = tmp_path / "kept"
    shutil.copytree(tmp_path / "logs", kept)
    assert tuning_db.drop_default_wins(kept) == 1
    pruned = tuning_db.open_database(kept)
    assert not pruned.get_all_tuning_records()
    # TVM's default still (no record left to say it was measured)
    assert apply_records.apply_database(tvm.IRModule({"r": func}), pruned, target,
                                        knobs)[1] == {"r": "default"}
    commit(searched, 0.5e-3)
    _, how = apply_records.apply_database(tvm.IRModule({"r": func}), db, target, knobs)
    assert how == {"r": "tuned"}


SHIPPED_RUNS = sorted({(p.parent.name, r["model"], r["bits"], r.get("strategy", "exact"))
                       for p in (REPO / "tuning_logs").glob(f"*/{tuning_db.RUNS}")
                       for r in json.loads(p.read_text()) if "trials_requested" in r})


@pytest.mark.parametrize("run", SHIPPED_RUNS, ids=["/".join(map(str, r[:3]))
                                                   for r in SHIPPED_RUNS])
def test_shipped_logs_still_match_their_model(run):
    """Shipped records are keyed by each kernel's structure: a change to a kernel's compute
    would silently stop them applying. Every target's database must load and give tuned
    schedules to the kernels of every model whose run went in."""
    target, model, bits, strategy = run
    profile = get_profile(target)
    db, _ = tuning_db.load(REPO / "tuning_logs", profile.name)
    assert db is not None
    loaded = pipeline.load_model(model, int(bits), 0)
    from dgms_tvm import compiler

    # the DGMS build that was tuned (logs from before the strategy was recorded: exact)
    lowered = compiler.lower(loaded.imported, int(bits), profile=profile,
                             strategy=strategy)
    mod = compiler.prepare(lowered, profile, schedule=False)
    _, how = apply_records.apply_database(mod, db, profile.tvm_target(),
                                          load_knobs(profile.name))
    from dgms_tvm.kernels import FAMILIES, KERNEL_ATTR

    tasks = [n for n in how if KERNEL_ATTR not in (mod[n].attrs or {})
             or tuner.searchable(FAMILIES[str(mod[n].attrs[KERNEL_ATTR])])]
    assert sum(how[n] == "tuned" for n in tasks) >= len(tasks) // 3, how


def test_remeasure_keeps_the_baseline_and_best_with_new_figures(tuned, tmp_path, monkeypatch,
                                                                 rng):
    """``tune.py --remeasure``: a record measured during a busy moment (here a figure 1000x
    too good) no longer wins: each task keeps two records, its untuned baseline and its best,
    both measured again, interleaved; compile applies the faster and it matches the oracle."""
    import shutil

    from tvm.s_tir import meta_schedule as ms

    src, *_ = tuned
    folder = tuning_db.target_dir(tmp_path, "x86")
    shutil.copytree(src, folder)
    (folder / tuning_db.RUNS).write_text(json.dumps([{"measure": "time", "model": "digitnet",
                                                      "bits": 4, "strategy": "exact"}]))
    task = dense_task()
    db = tuning_db.open_database(folder)
    worst = max(db.get_all_tuning_records(), key=lambda r: float(np.mean(
        [float(s) for s in r.run_secs])))
    db.commit_tuning_record(ms.database.TuningRecord(  # that schedule, "measured" too fast
        worst.trace, db.commit_workload(task.workload()), [1e-9], worst.target,
        worst.args_info))
    monkeypatch.setattr(tuner, "extract_tasks", lambda *a: [task])
    profile = get_profile("x86")
    rows = remeasure.remeasure(None, "digitnet", 4, profile,
                               tuner.make_measure(profile, "time"), tmp_path, rounds=2,
                               log=lambda m: None)
    assert len(rows) == 1 and rows[0]["hand"] > 1e-7 and rows[0]["best"] > 1e-7
    db = tuning_db.open_database(folder)
    secs = [float(np.mean([float(s) for s in r.run_secs])) for r in db.get_all_tuning_records()]
    assert 1 <= len(secs) <= 2 and min(secs) > 1e-7
    assert json.loads((folder / tuning_db.RUNS).read_text())[-1]["remeasured"]["rounds"] == 2
    func = dense.compute(SPEC)
    mod, _ = apply_records.apply_database(tvm.IRModule({"k": func}), db,
                                          profile.tvm_target(), load_knobs("x86"))
    cw = random_codebook_weight(rng, SPEC.weight_shape, SPEC.bits)
    x = rng.normal(size=(SPEC.m, SPEC.k)).astype(np.float32)
    got = run_kernel(mod["k"], [x, cw.packed, cw.codebook, np.zeros(SPEC.out_shape,
                                                                     np.float32)])
    assert rel_err(got, dense.reference(SPEC, x, cw.dense())) < 1e-5
