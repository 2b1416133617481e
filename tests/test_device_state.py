"""``manager.stop(pids=...)``: a run stops what it started and leaves other runs' devices,
and a tracker they still use, running (real processes stand in for the started ones)."""

import subprocess
import sys
import time

from dgms_tvm.device import manager


def _proc():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                            start_new_session=True)


def test_stop_only_what_one_run_started(tmp_path, monkeypatch):
    monkeypatch.setenv("DGMS_TVM_RUN_DIR", str(tmp_path))
    tracker, mine, theirs = _proc(), _proc(), _proc()
    addr = "127.0.0.1:9999"
    manager._save_state([
        {"kind": "tracker", "pid": tracker.pid, "host": "127.0.0.1", "port": 9999},
        {"kind": "supervisor", "pid": mine.pid, "key": "a", "tracker": addr},
        {"kind": "supervisor", "pid": theirs.pid, "key": "b", "tracker": addr},
    ])
    try:
        # My run started the tracker and one supervisor; another run uses the tracker.
        assert manager.stop(log=lambda *_: None, pids=[tracker.pid, mine.pid]) == 1
        mine.wait(10)
        time.sleep(0.2)
        assert tracker.poll() is None and theirs.poll() is None
        left = {e["pid"] for e in manager._load_state()}
        assert left == {tracker.pid, theirs.pid}
        # Once nothing else uses it, the tracker goes too.
        assert manager.stop(log=lambda *_: None, pids=[tracker.pid, theirs.pid]) == 2
        tracker.wait(10)
        theirs.wait(10)
        assert not manager.state_path().exists()
    finally:
        for p in (tracker, mine, theirs):
            p.kill()


def test_a_tracker_port_taken_meanwhile_is_not_shared(tmp_path, monkeypatch):
    """Two runs starting at once can pick the same free port: the one whose tracker cannot
    bind it must start its own on another port, not use the other run's tracker (its jobs
    would then run on the other run's devices)."""
    import os
    import signal
    import socket

    import pytest

    from dgms_tvm.errors import UserError

    monkeypatch.setenv("DGMS_TVM_RUN_DIR", str(tmp_path))
    other = socket.socket()  # another run's tracker, already listening
    other.bind(("127.0.0.1", 0))
    other.listen()
    taken = other.getsockname()[1]
    picks = iter([taken])
    real = manager._free_port
    monkeypatch.setattr(manager, "_free_port",
                        lambda start, span=200, count=1: next(picks, None) or real(start))
    entry = None
    try:
        entry = manager.start_tracker()
        assert entry["port"] != taken and manager._listens(entry["pid"], entry["port"])
        with pytest.raises(UserError, match=f"port {taken} is taken"):
            manager.start_tracker(port=taken)
    finally:
        other.close()
        if entry is not None:
            os.killpg(entry["pid"], signal.SIGKILL)
