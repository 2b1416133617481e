"""Issue 16, section 2: one tuning database per target that any model reuses, a budget that
``--trials`` bounds, bookkeeping that survives a torn file, no temporary folders left."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tvm

from dgms_tvm import compiler, frontend, pipeline
from dgms_tvm.errors import UserError
from dgms_tvm.schedules import apply_records, load_knobs, tuning_db
from dgms_tvm.targets import get_profile
from dgms_tvm.tune import driver, tuner
from dgms_tvm.tune.budget import budgets, plan_note

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "tuning_logs"


# --- the budget ------------------------------------------------------------------------------

@pytest.mark.parametrize("trials", [1, 5, 16, 17, 40, 100, 1000])
def test_budget_never_exceeds_trials(trials):
    # 14 computing kernels (digitnet's count on x86) and two reshapes: the old plan gave each
    # computing kernel at least a round, 224 trials for --trials 16.
    weights = [float(w) for w in np.geomspace(1e3, 1e8, 14)] + [0.0, 0.0]
    plan = budgets(weights, trials, 16)
    assert sum(plan) == trials
    assert all(b == 0 for w, b in zip(weights, plan, strict=True) if w == 0)
    chosen = [i for i, b in enumerate(plan) if b]
    assert all(plan[i] >= min(16, trials) for i in chosen)
    # the largest kernels first
    assert set(chosen) == set(sorted(range(14), key=lambda i: -weights[i])[:len(chosen)])
    note = plan_note(weights, plan, 16)
    assert (note is None) == (len(chosen) == 14)
    if note:
        assert f"{len(chosen)} of 14 kernels" in note


@pytest.mark.parametrize("bad", [["--trials", "-5"], ["--trials", "0"], ["--per-iter", "0"],
                                 ["--remeasure", "0"]])
def test_tune_rejects_bad_counts_in_one_line(bad, capsys):
    from scripts.tune import main

    assert main(["--model", "digitnet", "--target", "x86", *bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "positive integer" in err[0]


# --- the database: merge, prune, measures ---------------------------------------------------

def _relu(n=64):
    from tvm import te

    a = te.placeholder((n, n), name="a")
    b = te.compute((n, n), lambda i, j: te.max(a[i, j] * 2.0, 0.0), name="b")
    return te.create_prim_func([a, b])


def _db_with(folder: Path, func, costs: list[float], empty: float | None = None):
    """A database in ``folder`` with one searched record of ``func`` per cost (and a TVM
    default record of cost ``empty``)."""
    from tvm.s_tir import meta_schedule as ms

    wl_mod = tuner.Task("relu", func, 1, 1.0, ["FP32"], None).workload()
    target = get_profile("x86").tvm_target()
    db = tuning_db.open_database(folder, create=True)
    wl = db.commit_workload(wl_mod)
    info = ms.arg_info.ArgInfo.from_prim_func(wl_mod["main"])
    for i, c in enumerate(costs):
        sch = tvm.s_tir.Schedule(wl_mod)
        _, j = sch.get_loops(sch.get_sblock("b"))
        sch.vectorize(sch.split(j, [None, 2 ** (1 + i % 4)])[1])
        db.commit_tuning_record(ms.database.TuningRecord(sch.trace, wl, [c], target, info))
    if empty is not None:
        db.commit_tuning_record(ms.database.TuningRecord(
            tvm.s_tir.Schedule(wl_mod).trace, wl, [empty], target, info))
    return db


def test_merge_keeps_the_best_records_of_every_model(tmp_path):
    _db_with(tmp_path / "a", _relu(64), [5e-3, 1e-3, 4e-3, 9e-3], empty=6e-3)
    _db_with(tmp_path / "b", _relu(64), [2e-3, 1e9 * 10])  # a failed candidate: dropped
    _db_with(tmp_path / "c", _relu(32), [3e-3])
    runs = [{"model": m, "measure": "time"} for m in "abc"]
    stats = tuning_db.merge([tmp_path / m for m in "abc"], tmp_path / "x86", keep=2, runs=runs)
    assert stats == {"records_in": 8, "records_out": 4, "workloads": 2}
    db = tuning_db.open_database(tmp_path / "x86")
    costs = sorted(apply_records.record_cost(r) for r in db.get_all_tuning_records())
    assert costs == [1e-3, 2e-3, 3e-3, 6e-3]  # the best two of 64x64, its default; 32x32's
    assert [r["model"] for r in tuning_db.read_runs(tmp_path / "x86")[0]] == list("abc")
    # either model's kernel gets its best record
    for func in (_relu(64), _relu(32)):
        _, how = apply_records.apply_database(tvm.IRModule({"r": func}), db,
                                              get_profile("x86").tvm_target(), {})
        assert how == {"r": "tuned"}


def _indented(folder: Path) -> int:
    """How many workload lines of ``folder``'s database could still be compacted."""
    lines = (folder / tuning_db.DB_FILES[0]).read_text().splitlines()
    return sum(tuning_db.compact_workload_line(ln) != ln for ln in lines)


def test_a_written_database_is_compact_and_holds_the_same_records(tmp_path):
    import tvm_ffi

    src = _db_with(tmp_path / "a", _relu(64), [5e-3, 1e-3], empty=6e-3)
    assert _indented(tmp_path / "a") == 1  # MetaSchedule writes its module JSON indented
    tuning_db.write_database(list(src.get_all_tuning_records()), tmp_path / "b")
    assert _indented(tmp_path / "b") == 0
    size = {m: (tmp_path / m / tuning_db.DB_FILES[0]).stat().st_size for m in "ab"}
    assert size["b"] < 0.7 * size["a"]

    def key(r):
        return (tvm_ffi.structural_hash(r.workload.mod), str(r.trace), float(r.run_secs[0]))

    again = tuning_db.open_database(tmp_path / "b").get_all_tuning_records()
    assert sorted(map(key, again)) == sorted(map(key, src.get_all_tuning_records()))
    # a line of another layout is left as it is
    assert tuning_db.compact_workload_line('["1", "bm90IGpzb24="]') == '["1", "bm90IGpzb24="]'


@pytest.mark.parametrize("target", ["x86", "cortex-a72", "neoverse-n1"])
def test_shipped_databases_are_compact(target):
    assert _indented(tuning_db.DEFAULT_LOGS / target) == 0


def test_records_of_two_measures_are_not_mixed(tmp_path):
    _db_with(tmp_path / "a", _relu(), [1e-3])
    tuning_db.write_json_atomic(tmp_path / "a" / tuning_db.RUNS, [{"measure": "time"}])
    with pytest.raises(UserError, match="several measures"):
        tuning_db.merge([], tmp_path / "a", runs=[{"measure": "instructions"}])
    # tune.py refuses to add instruction counts to a database of wall times
    (tmp_path / "logs" / "x86").mkdir(parents=True)
    tuning_db.write_json_atomic(tmp_path / "logs" / "x86" / tuning_db.RUNS,
                                [{"measure": "time"}])
    m = tuner.Measure("instructions", None, None, "fake")
    with pytest.raises(UserError, match="measured by time"):
        driver.tune(None, "digitnet", 4, get_profile("x86"), 8, m, tmp_path / "logs",
                    log=lambda _: None)


# --- runs.json: atomic, and a torn one does not stop a resume ---------------------------------

def test_runs_file_is_replaced_whole(tmp_path):
    path = tmp_path / tuning_db.RUNS
    tuning_db.write_json_atomic(path, [{"model": "a"}])
    with pytest.raises(TypeError):
        tuning_db.write_json_atomic(path, [{"model": object()}])  # fails mid-write
    assert json.loads(path.read_text()) == [{"model": "a"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == [tuning_db.RUNS]


def test_torn_runs_file_warns_and_resumes_from_the_database(tmp_path, monkeypatch):
    """An older version rewrote its bookkeeping in place after each task: a kill then left
    half a file, and the resume stopped with a JSONDecodeError."""
    profile = get_profile("x86")
    folder = tuning_db.target_dir(tmp_path, "x86")
    task = tuner.Task("relu", _relu(), 1, 64 * 64.0, ["FP32"], None)
    _db_with(folder, task.func, [1e-3, 2e-3, 3e-3])
    (folder / tuning_db.RUNS).write_text('[{"model": "digitnet", "bits": 4, "tas')
    calls = []
    monkeypatch.setattr(tuner, "extract_tasks", lambda *a: [task])
    monkeypatch.setattr(tuner, "tune_task",
                        lambda db, t, budget, *a, **k: calls.append(budget) or (budget, [1e-3],
                                                                                None))
    logs = []
    run = driver.tune(None, "digitnet", 4, profile, 8, tuner.make_measure(profile, "time"),
                      tmp_path, per_iter=4, log=logs.append)
    assert any("torn" in m for m in logs)
    assert (folder / (tuning_db.RUNS + ".torn")).exists()  # set aside, not lost
    # rebuilt from the database: its 3 records count as done, 5 more make the budget of 8
    assert calls == [8] and run["tasks"][0]["trials"] == 8 and run["finished"]
    assert json.loads((folder / tuning_db.RUNS).read_text())[-1]["total_trials"] == 8


def test_a_new_run_adds_its_budget_to_records_of_earlier_runs(tmp_path, monkeypatch):
    profile = get_profile("x86")
    folder = tuning_db.target_dir(tmp_path, "x86")
    task = tuner.Task("relu", _relu(), 1, 64 * 64.0, ["FP32"], None)
    _db_with(folder, task.func, [1e-3, 2e-3, 3e-3])  # another model's run left 3 records
    calls = []
    monkeypatch.setattr(tuner, "extract_tasks", lambda *a: [task])
    monkeypatch.setattr(tuner, "tune_task",
                        lambda db, t, budget, *a, **k: calls.append(budget) or (budget, [1e-3],
                                                                                None))
    run = driver.tune(None, "resnet18", 4, profile, 8,
                      tuner.make_measure(profile, "time"), tmp_path, per_iter=4,
                      log=lambda _: None)
    assert calls == [3 + 8] and run["tasks"][0] | {"base": 3, "trials": 8} == run["tasks"][0]


# --- a real tiny run: the budget, the bookkeeping, no temporary folders left -------------------

@pytest.fixture(scope="module")
def digitnet():
    return pipeline.load_model("digitnet", 4, 0)


@pytest.fixture(scope="module")
def small():
    """Two tiny FP32 convs: a model whose kernels build in a moment."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, padding=1)).eval()
    return pipeline.LoadedModel(frontend.from_torch(model, (torch.randn(1, 1, 6, 6),)), "small")


@pytest.fixture(scope="module")
def tiny_run(small, tmp_path_factory):
    private = tmp_path_factory.mktemp("tmpdir")
    logs = tmp_path_factory.mktemp("logs")
    mp = pytest.MonkeyPatch()
    mp.setenv("TMPDIR", str(private))  # the builder's and runner's worker processes too
    mp.setattr(tempfile, "tempdir", str(private))
    try:
        profile = get_profile("x86")
        notes = []
        run = driver.tune(small, "small", None, profile, 3,
                          tuner.make_measure(profile, "time"), logs, per_iter=3,
                          log=notes.append, strategy="exact")
        left = sorted(p.name for p in private.iterdir())
    finally:
        mp.undo()
    return run, notes, left, logs


@pytest.mark.slow
def test_tiny_run_keeps_to_its_budget_and_says_what_it_left_out(tiny_run):
    run, notes, _, logs = tiny_run
    assert run["trials_requested"] == 3 and 1 <= run["total_trials"] <= 3
    assert sum(t["budget"] > 0 for t in run["tasks"]) == 1
    assert any("1 of" in n and "the largest first" in n for n in notes)
    (entry,) = json.loads((logs / "x86" / tuning_db.RUNS).read_text())
    assert entry["measure"] == "time" and entry["finished"] and entry["seconds"] > 0
    assert entry["total_trials"] == run["total_trials"]
    assert _indented(logs / "x86") == 0  # compacted after the run


@pytest.mark.slow
def test_tiny_run_leaves_no_temporary_folder(tiny_run):
    # MetaSchedule's work folder (dgms-tune-*), the untuned baseline's build folder (tmp*)
    _, _, left, _ = tiny_run
    assert [n for n in left if not n.startswith("torchinductor")] == []


@pytest.mark.slow
def test_compile_says_how_many_kernels_matched(tiny_run, small, tmp_path, capsys):
    *_, logs = tiny_run
    manifest = pipeline.compile_model("small", "x86", tmp_path / "art", None, loaded=small,
                                      quiet=False, tuning_logs=logs, strategy="exact")
    err = capsys.readouterr().err
    t = manifest["tuning"]
    assert t["matched"] >= 1 and t["logs"] == str(logs / "x86")
    assert (f"tuning: {t['matched']} of {len(t['kernels'])} kernels matched a record in "
            f"{logs / 'x86'}") in err


# --- the shipped databases apply to any model --------------------------------------------------

def _matched(loaded, target: str, bits, strategy: str) -> tuple[int, int]:
    profile = get_profile(target)
    db, _ = tuning_db.load(SHIPPED, target)
    assert db is not None
    lowered = compiler.lower(loaded.imported, bits, profile=profile,
                             strategy=strategy)
    mod = compiler.prepare(lowered, profile, schedule=False)
    _, how = apply_records.apply_database(mod, db, profile.tvm_target(),
                                          load_knobs(profile.name))
    return sum(v in apply_records.MATCHED for v in how.values()), len(how)


@pytest.mark.slow
def test_an_onnx_model_gets_the_shipped_records(tmp_path):
    """The shipped records came from the built-in digitnet; the same network exported to
    ONNX (what a user brings) has kernels of the same structure and must find them."""
    from dgms_tvm import zoo

    built = zoo.build("digitnet", 4, 0)
    path = tmp_path / "my_digits.onnx"
    path.write_bytes(frontend.onnx_bytes(built.model, (built.example_input,)))
    loaded = pipeline.load_model(str(path), None)
    matched, total = _matched(loaded, "cortex-a72", None, "auto")
    assert matched >= 1, (matched, total)


@pytest.mark.slow
def test_compile_without_bits_finds_the_shipped_records(digitnet, tmp_path, capsys):
    manifest = pipeline.compile_model("digitnet", "cortex-a72", tmp_path / "art", None,
                                      loaded=digitnet, quiet=True, tuning_logs=SHIPPED)
    assert manifest["tuning"]["logs"] == str(SHIPPED / "cortex-a72")
    assert manifest["tuning"]["matched"] >= 1
    assert manifest["bits"] == 4  # the width the built-in model was quantized at
    assert "kernels matched a record in" not in capsys.readouterr().err  # quiet
