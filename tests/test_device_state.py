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
