"""Issue #16, section 3: two runs at once, and the devices they start.

The first tests need no device (real processes stand in for the started ones); the tests
marked ``NEEDS_QEMU`` start emulated devices, each in a run folder of its own, and check
that nothing they started is left running and that the state file is consistent after."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from dgms_tvm.device import manager, ports, state
from tests.helpers import NEEDS_QEMU

ROOT = Path(__file__).resolve().parents[2]
CPU = "cortex-a72"


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """A private run folder (state file, logs) and port-claim folder for the test, in this
    process and in the commands it starts."""
    folder = tmp_path / "run"
    monkeypatch.setenv("DGMS_TVM_RUN_DIR", str(folder))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    return folder


def _script(name, *args, timeout=600, **kw):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kw)


def _sleeper():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                            start_new_session=True)


def _append_under_lock(folder: str, tag: str, n: int) -> None:
    os.environ["DGMS_TVM_RUN_DIR"] = folder
    for i in range(n):
        with state.locked() as entries:
            entries.append({"kind": "mark", "pid": 0, "tag": f"{tag}{i}"})
            time.sleep(0.002)  # (widens the read-modify-write window an unlocked file loses)


def test_concurrent_writers_lose_no_entry(run_dir):
    """Two processes rewriting the state file at once: every entry survives (without the
    lock, each rewrote what it had read, and one's entries were lost)."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_under_lock, args=(str(run_dir), t, 40)) for t in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len({e["tag"] for e in state.load()}) == 80


def test_ports_are_claimed_and_proven_free(run_dir):
    """A port that something listens on is skipped, and a port claimed for one supervisor
    (whose devices bind it seconds later) is not chosen again by another run."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        base, fds = ports.claim_ports(port, 2)
        assert base > port
        again, fds2 = ports.claim_ports(port, 2)
        assert again >= base + 2  # the first claim holds base and base + 1
        ports.release_fds(fds + fds2)
        third, fds3 = ports.claim_ports(port, 2)  # released: free again
        assert third == base
        ports.release_fds(fds3)
    finally:
        busy.close()


def test_a_run_stops_only_what_it_started(run_dir):
    """A run lets go of the devices it used: ones found running (``device.py start``) stay;
    ones started for runs stop when the last run holding them lets go, with their devices
    and the tracker started for them; a run killed without letting go is dropped later."""
    tracker, found, shared, shared_dev, orphan = (_sleeper() for _ in range(5))
    # run pids no real process can have (above any pid_max): real pids wrap around to small
    # numbers on a machine up for long
    me, other, dead = (2**22 + i for i in (1, 2, 3))
    addr = "127.0.0.1:9999"
    state.save([
        {"kind": "tracker", "pid": tracker.pid, "host": "127.0.0.1", "port": 9999,
         "ephemeral": True},
        {"kind": "supervisor", "pid": found.pid, "key": "a", "tracker": "127.0.0.1:9998",
         "ephemeral": False, "holders": [me]},  # (at a user's tracker)
        {"kind": "supervisor", "pid": shared.pid, "key": "b", "tracker": addr,
         "ephemeral": True, "holders": [me, other], "devices": [shared_dev.pid]},
        {"kind": "supervisor", "pid": orphan.pid, "key": "c", "tracker": addr,
         "ephemeral": True, "holders": [dead]},
    ])
    alive = {me, other}
    real = state.alive
    try:
        state.alive = lambda pid: pid in alive or real(pid)
        # My run ends: the devices it found stay, the shared ones stay (the other run uses
        # them); the orphan (its run was killed) goes.
        assert manager.release(me, log=lambda *_: None) == 1
        orphan.wait(20)
        assert found.poll() is None and shared.poll() is None and tracker.poll() is None
        # The other run ends: the shared devices go, with the tracker started for them.
        alive.discard(me)
        assert manager.release(other, log=lambda *_: None) == 2
        for p in (shared, shared_dev, tracker):
            p.wait(20)
        assert found.poll() is None
        assert [e["pid"] for e in state.load()] == [found.pid]
    finally:
        state.alive = real
        for p in (tracker, found, shared, shared_dev, orphan):
            p.kill()
            p.wait()


def test_device_count_is_capped_before_anything_starts(run_dir):
    res = _script("device.py", "start", "--count", "100", timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: --count 100 is more emulated devices than this host can run: at most "
        f"{manager.max_devices()} (2 per core, {os.cpu_count()} cores)"]
    assert not run_dir.exists() or not (run_dir / "state.json").exists()


def test_bench_checks_its_arguments_before_starting_devices(run_dir, tmp_path):
    t0 = time.monotonic()
    res = _script("bench.py", "--model", "nope", "--output", str(tmp_path / "o"), timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("error: model 'nope' is neither")
    res = _script("bench.py", "--model", "digitnet", "--devices", "100",
                  "--output", str(tmp_path / "o"), timeout=120)
    assert res.returncode == 2 and "error: --devices 100 is more" in res.stderr
    assert time.monotonic() - t0 < 60
    assert not (run_dir / "state.json").exists() and not (run_dir / "events.log").exists()


def test_status_into_a_closed_pipe_is_quiet(run_dir):
    """``device.py status | head``: no BrokenPipe traceback."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "device.py"), "status"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    proc.wait(60)
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert proc.returncode == 141


def test_a_missing_count_says_why(run_dir):
    """With counting on, a marker in no file is not blamed on counting being off."""
    from dgms_tvm.device.insn import Counter

    c = object.__new__(Counter)
    c.key, c._file = CPU, None
    state.save([{"kind": "supervisor", "pid": 1, "key": CPU, "cpu": CPU,
                 "instruction_counts": True}])
    assert "restarted mid-session" in c._why_no_count(7, 10)
    state.save([{"kind": "supervisor", "pid": 1, "key": CPU, "cpu": CPU,
                 "instruction_counts": False}])
    assert "without instruction counting" in c._why_no_count(7, 10)


# --- with emulated devices -------------------------------------------------------------


def _ours(run_dir: Path) -> list[psutil.Process]:
    """Live processes started for this test's run folder (trackers, supervisors, qemu), not
    this process's own workers (MetaSchedule's)."""
    out = []
    for p in psutil.process_iter(["cmdline", "environ"]):
        try:
            env = p.info["environ"] or {}
            if env.get("DGMS_TVM_RUN_DIR") == str(run_dir) and p.status() != "zombie" \
                    and os.getpid() not in [p.pid, *(a.pid for a in p.parents())]:
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def _assert_nothing_left(run_dir: Path) -> None:
    deadline = time.monotonic() + 20
    while _ours(run_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = [" ".join(p.cmdline())[:120] for p in _ours(run_dir)]
    assert not left, f"left running: {left}"
    assert state.load() == []
    # nor the devices' counter files and block logs (megabytes a run)
    assert not sorted(run_dir.glob("insn-*")), sorted(run_dir.glob("insn-*"))


@NEEDS_QEMU
def test_second_start_reuses_its_supervisor_and_ctrl_c_stops_what_it_started(run_dir):
    try:
        first = _script("device.py", "start", "--count", "1", timeout=400)
        assert first.returncode == 0, first.stderr
        second = _script("device.py", "start", "--count", "1", timeout=400)
        assert second.returncode == 0, second.stderr
        assert "using the 1 emulated" in second.stdout
        assert second.stdout.splitlines()[-1].startswith("ready: 1 x cortex-a72")
        sups = [e for e in state.load() if e["kind"] == "supervisor"]
        assert len(sups) == 1 and len(sups[0]["devices"]) == 1
        # Ctrl-C while 2 devices under another key come up: they are stopped.
        proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "device.py"), "start",
                                 "--count", "2", "--key", "other"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(
                e.get("key") == "other" and e.get("devices") for e in state.load()):
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130 and "interrupted" in err
        assert [e["key"] for e in state.load() if e["kind"] == "supervisor"] == [CPU]
        assert all(p.environ().get("DGMS_TVM_RUN_DIR") == str(run_dir)
                   for p in _ours(run_dir))
        assert not [p for p in _ours(run_dir) if "other" in p.cmdline()]
    finally:
        stop = _script("device.py", "stop", timeout=120)
    assert stop.returncode == 0
    _assert_nothing_left(run_dir)


@NEEDS_QEMU
def test_two_benches_at_once_share_the_devices_and_leave_nothing(run_dir, tmp_path):
    """The issue's reproduction, on the tiniest model: both succeed, and once both are
    done nothing either started runs any more."""
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--model", "digitnet",
           "--target", CPU, "--strategy", "exact", "--repeat", "1", "--no-per-layer",
           "--no-peers", "--tuning-logs", "none"]
    procs = [subprocess.Popen([*cmd, "--output", str(tmp_path / f"out{n}")], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in "AB"]
    try:
        outs = [p.communicate(timeout=540) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.communicate(timeout=60)
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    for n in "AB":
        rows = json.loads((tmp_path / f"out{n}" / "report.json").read_text())["rows"]
        assert [r["label"] for r in rows] == ["FP32", "DGMS 4-bit"]
        assert all(r["minstr"] > 0 for r in rows)
    events = (run_dir / "events.log").read_text()
    assert events.count("supervisor") >= 1 and "exited with code" not in events
    _assert_nothing_left(run_dir)


@NEEDS_QEMU
def test_the_board_path_bench_and_tune_through_a_tracker(run_dir, tmp_path):
    """A board as the real-board path sees one: an emulated device under a board-like key,
    without the instruction counter, reached only through ``--tracker``. bench times both
    builds with the device's time_evaluator; tune measures candidates with RPCRunner
    (``tuner.make_measure`` as ``tune.py --tracker --key`` builds it), by time."""
    key = "rk3399-board"
    try:
        up = _script("device.py", "start", "--count", "1", "--key", key,
                     "--no-instruction-counts", timeout=400)
        assert up.returncode == 0, up.stderr
        (sup,) = [e for e in state.load() if e["kind"] == "supervisor"]
        assert not sup["instruction_counts"]
        tracker = sup["tracker"]
        res = _script("bench.py", "--model", "digitnet", "--target", CPU, "--tracker", tracker,
                      "--key", key, "--strategy", "exact", "--repeat", "2", "--no-per-layer",
                      "--tuning-logs", "none", "--output", str(tmp_path / "bench"))
        assert res.returncode == 0, res.stderr[-2000:]
        doc = json.loads((tmp_path / "bench" / "report.json").read_text())
        assert not doc["emulated"] and doc["device_key"] == key
        assert [r["label"] for r in doc["rows"]] == ["FP32", "DGMS 4-bit"]  # (no peers)
        # ... but the folder that times them on the board, and the report says how.
        kit = tmp_path / "bench" / doc["peer_kit"]
        assert sorted(p.name for p in kit.glob("*.onnx")) == [
            "fp32.onnx", "int8-s8s8-qdq.onnx", "int8-s8s8-qoperator.onnx", "int8-u8s8-qdq.onnx",
            "int8-u8s8-qoperator.onnx"]
        assert "python3 time_peers.py" in (tmp_path / "bench" / "report.md").read_text()
        assert all(0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"] and r["minstr"] is None
                   for r in doc["rows"])
        # tune.py --tracker: its measure is time by RPCRunner through the tracker (the whole
        # model's ten tasks take over ten minutes here; one kernel shows the path).
        _tune_one_kernel_by_time(tracker, key, tmp_path)
    finally:
        stop = _script("device.py", "stop", timeout=120)
    assert stop.returncode == 0
    _assert_nothing_left(run_dir)


def _tune_one_kernel_by_time(tracker: str, key: str, tmp_path: Path) -> None:
    from dgms_tvm.device.client import Tracker, parse_tracker
    from dgms_tvm.kernels.fp32 import dense
    from dgms_tvm.schedules import load_knobs, tuning_db
    from dgms_tvm.targets import get_profile
    from dgms_tvm.tune import tuner
    from tests.tune.test_tuner import dense_task

    profile = get_profile(CPU)
    db = tuning_db.open_database(tmp_path / "logs", create=True)
    measure = tuner.make_measure(profile, "time", Tracker(*parse_tracker(tracker)), key, 1,
                                 tmp_path / "work")
    assert measure.name == "time" and key in measure.device
    done, costs, hand = tuner.tune_task(db, dense_task(dense.DenseSpec(1, 32, 64, bits=4)), 2,
                                        profile.tvm_target(), load_knobs(CPU), measure,
                                        tmp_path, per_iter=2)
    # Records in seconds of the device's time_evaluator (a 1x32x64 kernel: microseconds).
    assert done == 2 and hand is not None and costs and all(1e-7 < c < 0.1 for c in costs)
