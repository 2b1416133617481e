"""The record of what was started here: trackers, device supervisors and their devices.

One JSON list in ``<run dir>/state.json`` (``$DGMS_TVM_RUN_DIR``, default the cache folder),
shared by every command on the machine that uses that folder. Two commands may run at once
(two benchmarks, a ``device.py start`` beside a tuning run), so every read-modify-write
happens under an exclusive ``fcntl`` lock on ``state.lock`` (:func:`locked`), and the file is
rewritten atomically (a temporary file renamed over it), so a reader never sees half a file.

Each entry is a process group that was started here (a session leader)::

    {"kind": "tracker", "pid", "host", "port", "ephemeral"}
    {"kind": "supervisor", "pid", "key", "cpu", "count", "port_base", "tracker",
     "instruction_counts", "ephemeral", "holders": [pid, ...], "devices": [pid, ...]}

``holders`` are the runs (process ids) using a supervisor's devices now; an ``ephemeral``
entry was started by a run for itself, and goes when its last holder lets go (see
:mod:`dgms_tvm.device.manager`). A persistent one (``device.py start``) stays until
``device.py stop``. ``devices`` are the supervisor's qemu servers, each a process group of
its own, recorded by the supervisor as it starts them, so that a stop finds them even when
the supervisor itself is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import tempfile
import time
from pathlib import Path

from .sysroot import run_dir


def state_path() -> Path:
    return run_dir() / "state.json"


def _lock_path() -> Path:
    return run_dir() / "state.lock"


def load() -> list[dict]:
    """The entries as they are now (a snapshot: change them only inside :func:`locked`)."""
    try:
        entries = json.loads(state_path().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    return entries if isinstance(entries, list) else []


def save(entries: list[dict]) -> None:
    """Write ``entries`` atomically (an empty list removes the file). Call it under
    :func:`locked` unless nothing else can run (a test)."""
    path = state_path()
    if not entries:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".state.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(entries, indent=2) + "\n")
    os.replace(tmp, path)


class Abandoned(Exception):
    """:func:`locked` gave up waiting for the lock (its ``keep_waiting`` said so)."""


@contextlib.contextmanager
def locked(signals_held: bool = True, keep_waiting=None):
    """Hold the state lock; yield the entries (a list to change in place), written back at
    the end. With ``signals_held``, SIGINT and SIGTERM wait until the entries are written: a
    process started inside the block is recorded before a Ctrl-C can stop the command, so
    whatever cleans up after the Ctrl-C finds it. With ``keep_waiting`` (a callable), the
    lock is polled while it returns true, else :class:`Abandoned` is raised (a supervisor
    being stopped by the lock's holder must not wait for it)."""
    folder = run_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with _signals_deferred(signals_held and _in_main_thread()):
        with open(_lock_path(), "a") as lock:
            if keep_waiting is None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            else:
                while True:
                    try:
                        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if not keep_waiting():
                            raise Abandoned from None
                        time.sleep(0.05)
            try:
                entries = load()
                before_text = json.dumps(entries)
                try:
                    yield entries
                finally:  # (also on an error: a process started in the block is recorded)
                    if json.dumps(entries) != before_text:
                        save(entries)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def _signals_deferred(active: bool):
    """SIGINT / SIGTERM that arrive in the block take effect (as the handlers before it)
    at its end. Handlers, not a signal mask: a mask would be inherited by the processes
    started in the block, which then could not be stopped by SIGTERM."""
    if not active:
        yield
        return
    pending: list[int] = []
    kinds = (signal.SIGINT, signal.SIGTERM)
    before = {s: signal.signal(s, lambda sig, _frame: pending.append(sig)) for s in kinds}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    for sig in pending[:1]:
        handler = before[sig]
        if callable(handler):
            handler(sig, None)
        elif handler == signal.SIG_DFL:
            signal.raise_signal(sig)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` lives (a session's children outlive its
    leader: TVM's tracker and servers serve from a child)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(pgid: int, grace: float = 15.0) -> bool:
    """SIGTERM process group ``pgid``, wait up to ``grace`` s, then SIGKILL what is left.
    Returns whether the group existed."""
    if not group_alive(pgid):
        _reap(pgid)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive(pgid) and time.monotonic() < deadline:
        _reap(pgid)
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    _reap(pgid)
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
