"""Free TCP ports on loopback, and a tracker started on one.

A port is free when it can be bound now *and* no other process of ours has claimed it: an
emulated device binds its port seconds after its supervisor chose it (qemu starts a guest
Python first), and a second run choosing in that window would pick the same port. So a
chosen port is claimed with an ``flock`` on ``<locks>/<port>.lock`` (machine wide:
``$DGMS_TVM_PORT_LOCKS``, default ``/tmp/dgms-tvm-ports``), whose descriptor is handed to the
process that will use the port; the claim lasts as long as that process, whichever run
folder (state file) it belongs to.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..errors import UserError
from .sysroot import run_dir

TRACKER_PORT = 9190
DEVICE_PORT = 9090


def _lock_dir() -> Path:
    folder = Path(os.environ.get("DGMS_TVM_PORT_LOCKS", "/tmp/dgms-tvm-ports"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def bindable(port: int) -> bool:
    """Whether ``port`` can be bound on loopback now (the proof that nothing listens)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _claim(port: int) -> int | None:
    fd = os.open(_lock_dir() / f"{port}.lock", os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def claim_ports(start: int, count: int = 1, taken=(), span: int = 200) -> tuple[int, list[int]]:
    """The first ``base`` from ``start`` with ``count`` ports from it free and unclaimed,
    claimed now. Returns ``(base, fds)``: pass ``fds`` to the process that uses the ports
    (``Popen(pass_fds=...)``), then :func:`release_fds` them here."""
    taken = set(taken)
    for base in range(start, start + span):
        fds: list[int] = []
        for port in range(base, base + count):
            fd = None if port in taken or not bindable(port) else _claim(port)
            if fd is None or not bindable(port):  # (bound by another just before the claim)
                release_fds(fds + ([fd] if fd is not None else []))
                fds = []
                break
            fds.append(fd)
        if fds:
            return base, fds
    raise UserError(f"no {count} free port(s) in {start}..{start + span}")


def release_fds(fds) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` or one of its children (TVM's tracker serves from a child)
    listens on TCP ``port``."""
    import psutil

    try:
        root = psutil.Process(pid)
        conns = [c for p in (root, *root.children(recursive=True))
                 for c in p.net_connections(kind="tcp")]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns)


def spawn_tracker(host: str = "127.0.0.1", port: int | None = None):
    """Start a tracker in a session of its own on ``port`` (by default the first free,
    unclaimed one from 9190). Returns ``(proc, port)``; record ``proc.pid`` at once, then
    :func:`wait_tracker`."""
    if port is not None and not bindable(port):
        raise UserError(f"port {port} is taken by another process: no tracker started")
    base, fds = claim_ports(port or TRACKER_PORT, span=1 if port else 200)
    log = run_dir() / "tracker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", host, "--port", str(base),
             "--port-end", str(base + 1), "--silent"],
            stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True,
            pass_fds=fds)
    finally:
        release_fds(fds)
    return proc, base


def wait_tracker(proc, host: str, port: int, timeout: float = 90.0) -> None:
    """Wait until the tracker ``proc`` answers on ``port``; a clear error (and the process
    group killed) if it exits or another process holds the port."""
    from .client import Tracker

    log = run_dir() / "tracker.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(f"the tracker exited at start (see {log})")
        if listens(proc.pid, port):
            with contextlib.suppress(UserError):
                Tracker(host, port).summary()
                return
        elif not bindable(port):
            time.sleep(0.2)  # (ours may have bound it since the first look)
            if not listens(proc.pid, port) and not bindable(port):
                _kill(proc)
                raise UserError(f"port {port} was taken by another process: no tracker "
                                "started")
        time.sleep(0.3)
    _kill(proc)
    raise UserError(f"the tracker did not answer on {host}:{port} within {timeout:.0f} s")


def _kill(proc) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
