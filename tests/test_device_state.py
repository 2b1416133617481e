"""``manager.stop(pids=...)``: a run stops what it started and leaves other runs' devices,
and a tracker they still use, running (real processes stand in for the started ones)."""

import subprocess
import sys
import time

from dgms_tvm.device import manager, ports, state


def _proc():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                            start_new_session=True)


def test_stop_only_what_one_run_started(tmp_path, monkeypatch):
    monkeypatch.setenv("DGMS_TVM_RUN_DIR", str(tmp_path))
    tracker, mine, theirs = _proc(), _proc(), _proc()
    addr = "127.0.0.1:9999"
    state.save([
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
        left = {e["pid"] for e in state.load()}
        assert left == {tracker.pid, theirs.pid}
        # Once nothing else uses it, the tracker goes too.
        assert manager.stop(log=lambda *_: None, pids=[tracker.pid, theirs.pid]) == 2
        tracker.wait(10)
        theirs.wait(10)
        assert not state.state_path().exists()
    finally:
        for p in (tracker, mine, theirs):
            p.kill()


def test_a_tracker_never_shares_a_taken_port(tmp_path, monkeypatch):
    """A port another process listens on (another run's tracker) is skipped: a tracker
    started here must not end up using the other run's (its jobs would run on the other
    run's devices); asked for that port, it is a clear error."""
    import os
    import signal
    import socket

    import pytest

    from dgms_tvm.errors import UserError

    monkeypatch.setenv("DGMS_TVM_RUN_DIR", str(tmp_path))
    other = socket.socket()  # another run's tracker, already listening on the first port
    base, fds = ports.claim_ports(ports.TRACKER_PORT)
    ports.release_fds(fds)
    other.bind(("127.0.0.1", base))
    other.listen()
    proc = None
    try:
        proc, port = ports.spawn_tracker()
        ports.wait_tracker(proc, "127.0.0.1", port)
        assert port != base and ports.listens(proc.pid, port)
        with pytest.raises(UserError, match=f"port {base} is taken"):
            ports.spawn_tracker(port=base)
    finally:
        other.close()
        if proc is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
