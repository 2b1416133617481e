"""Start, inspect and stop a TVM RPC tracker and emulated Cortex-A devices behind it.

``start`` uses a tracker already listening at the address (a user's board farm) or starts
one on loopback; then it starts a supervisor that runs N qemu-emulated RPC servers registered
under a key (by default the CPU name). Everything started is recorded in
``.cache/device/state.json`` so that ``stop`` stops exactly that, by process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..errors import UserError
from ..targets import get_profile
from .client import Tracker, parse_tracker
from .insn import ensure_plugin
from .sysroot import ensure_sysroot, run_dir

REGISTER_TIMEOUT_S = 240.0


def state_path() -> Path:
    return run_dir() / "state.json"


def _load_state() -> list[dict]:
    try:
        return json.loads(state_path().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def _save_state(entries: list[dict]) -> None:
    state_path().parent.mkdir(parents=True, exist_ok=True)
    state_path().write_text(json.dumps(entries, indent=2) + "\n")


def _free_port(start: int, span: int = 200, count: int = 1) -> int:
    """The first port from ``start`` with ``count`` free ports from it."""
    for port in range(start, start + span):
        if not any(_listens_any(p) for p in range(port, port + count)):
            return port
    raise UserError(f"no {count} free port(s) in {start}..{start + span}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _listens(pid: int, port: int) -> bool:
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


def start_tracker(host: str = "127.0.0.1", port: int | None = None) -> dict:
    """Start a tracker on loopback in a session of its own; wait until it answers. Without a
    ``port``, the first free one from 9190, and the next one if another run takes it first
    (two runs starting at once would otherwise both find a tracker answering there, one of
    them another run's, and share its devices)."""
    for _ in range(5):
        entry = _start_tracker(host, port or _free_port(9190))
        if entry is not None:
            return entry
        if port is not None:
            raise UserError(f"port {port} is taken by another process: no tracker started")
    raise UserError("could not start a tracker: its ports kept being taken by other runs")


def _start_tracker(host: str, port: int) -> dict | None:
    log = run_dir() / "tracker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", host, "--port", str(port),
         "--port-end", str(port + 1), "--silent"],
        stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if _listens_any(port) and not _listens(proc.pid, port):
            time.sleep(0.2)  # (ours may have bound it since the first look)
            if not _listens(proc.pid, port) and _listens_any(port):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return None  # another process holds the port: ours cannot bind it
        if proc.poll() is not None:
            raise UserError(f"the tracker exited at start (see {log})")
        if _listens(proc.pid, port):
            try:
                Tracker(host, port).summary()
                return {"kind": "tracker", "pid": proc.pid, "host": host, "port": port}
            except UserError:
                pass
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    raise UserError(f"the tracker did not answer on {host}:{port} within 30 s")


def _listens_any(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return False
        except OSError:
            return True


def start(cpu: str, count: int = 1, tracker: str | None = None, key: str | None = None,
          threads: int = 1, log=print, wait: bool = True) -> dict:
    """Start ``count`` emulated ``cpu`` devices (and a tracker if none answers).

    Returns
    -------
    dict
        ``{"tracker": "HOST:PORT", "key": KEY, "pids": [...]}`` (``pids``: the process groups
        this call started, for ``stop(pids=...)``).
    """
    profile = get_profile(cpu)
    if not profile.is_arm or profile.qemu_cpu is None:
        raise UserError(f"{cpu} is not an emulated Cortex-A profile")
    if count < 1:
        raise UserError("--count must be at least 1")
    key = key or profile.name
    sysroot = ensure_sysroot(log=log)
    try:
        plugin = ensure_plugin(log=log)
    except UserError as err:
        log(f"warning: no instruction counts on these devices ({err})")
        plugin = None
    entries = _load_state()
    pids = []
    host, port = parse_tracker(tracker) if tracker else ("127.0.0.1", None)
    ours = next((e for e in entries if e["kind"] == "tracker" and _alive(e["pid"])), None)
    if port is None and ours is not None:
        host, port = ours["host"], ours["port"]
    if port is None or not Tracker(host, port).reachable():
        if tracker and host not in ("127.0.0.1", "localhost"):
            raise UserError(f"tracker {host}:{port} is unreachable")
        entry = start_tracker(host, port)
        entries.append(entry)
        pids.append(entry["pid"])
        host, port = entry["host"], entry["port"]
        log(f"started a tracker on {host}:{port}")
    taken = {e["port_base"] + i for e in entries if e["kind"] == "supervisor"
             for i in range(e["count"])}
    base = _free_port(max([9090, *[p + 1 for p in taken]]), count=count)
    sup_log = run_dir() / "events.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dgms_tvm.device.supervisor", "--tracker", f"{host}:{port}",
         "--key", key, "--cpu", profile.qemu_cpu, "--count", str(count),
         "--port-base", str(base), "--guest-python", str(sysroot.python),
         "--runtime-extra", str(sysroot.runtime_extra), "--threads", str(threads),
         "--log", str(sup_log), *(["--plugin", str(plugin)] if plugin else [])],
        stdout=open(run_dir() / "supervisor.log", "a"), stderr=subprocess.STDOUT,
        start_new_session=True)
    entries.append({"kind": "supervisor", "pid": proc.pid, "key": key, "cpu": cpu,
                    "count": count, "port_base": base, "tracker": f"{host}:{port}",
                    "instruction_counts": plugin is not None})
    pids.append(proc.pid)
    _save_state(entries)
    log(f"starting {count} emulated {cpu} device(s) under key {key!r} "
        f"(tracker {host}:{port}); events in {sup_log}")
    if wait:
        wait_for_devices(Tracker(host, port), key, count, proc)
    return {"tracker": f"{host}:{port}", "key": key, "pids": pids}


def wait_for_devices(tracker: Tracker, key: str, count: int, proc=None,
                     timeout: float = REGISTER_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise UserError(f"the device supervisor exited (see {run_dir()})")
        if tracker.free(key) >= count:
            return
        time.sleep(1.0)
    raise UserError(f"{count} device(s) under key {key!r} did not register within "
                    f"{timeout:.0f} s (logs in {run_dir()})")


def stop(log=print, pids=None) -> int:
    """Stop everything ``start`` started (supervisors first, then trackers), or only the
    process groups ``pids`` (what one ``start`` call started: a run that started devices
    stops its own and leaves those of other runs, and a tracker they still use, alone).
    Returns how many process groups were stopped."""
    entries = _load_state()
    chosen = entries if pids is None else [e for e in entries if e["pid"] in set(pids)]
    rest = [e for e in entries if e not in chosen]
    in_use = {e["tracker"] for e in rest if e["kind"] == "supervisor" and _alive(e["pid"])}
    chosen = [e for e in chosen if e["kind"] != "tracker"
              or f"{e['host']}:{e['port']}" not in in_use]
    rest = [e for e in entries if e not in chosen]
    n = 0
    for kind in ("supervisor", "tracker"):
        for e in chosen:
            if e["kind"] != kind or not _alive(e["pid"]):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(e["pid"], signal.SIGTERM)
            deadline = time.monotonic() + 15
            while _alive(e["pid"]) and time.monotonic() < deadline:
                _reap(e["pid"])
                time.sleep(0.2)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(e["pid"], signal.SIGKILL)
            _reap(e["pid"])
            n += 1
    if rest:
        _save_state(rest)
    else:
        state_path().unlink(missing_ok=True)
    log(f"stopped {n} process group(s)")
    return n


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def status() -> str:
    """The tracker's queue (per key: total, free, pending) and what ``start`` started."""
    entries = _load_state()
    trackers = {e["tracker"] for e in entries if e["kind"] == "supervisor"}
    trackers |= {f"{e['host']}:{e['port']}" for e in entries if e["kind"] == "tracker"}
    env = os.environ.get("TVM_TRACKER_HOST")
    if env:
        trackers.add(f"{env}:{os.environ.get('TVM_TRACKER_PORT', '9190')}")
    if not trackers:
        return "nothing started (scripts/device.py start --cpu cortex-a72)"
    lines = []
    for addr in sorted(trackers):
        t = Tracker(*parse_tracker(addr))
        if not t.reachable():
            lines.append(f"tracker {addr}: unreachable")
            continue
        summary = t.summary()
        servers = [s.get("key", "") for s in summary["server_info"]]
        lines.append(f"tracker {addr}")
        lines.append(f"  {'key':<16}{'total':>6}{'free':>6}{'pending':>9}")
        for key, q in sorted(summary["queue_info"].items()):
            total = servers.count(f"server:{key}")
            lines.append(f"  {key:<16}{total:>6}{q['free']:>6}{q['pending']:>9}")
    for e in entries:
        state = "running" if _alive(e["pid"]) else "dead"
        what = (f"{e['count']} x {e['cpu']} under key {e['key']}" if e["kind"] == "supervisor"
                else f"tracker {e['host']}:{e['port']}")
        lines.append(f"started here: {e['kind']} pid {e['pid']} ({what}): {state}")
    return "\n".join(lines)


def serving(tracker: Tracker, key: str) -> int:
    """How many devices are registered under ``key`` (a key stays in the tracker's queue
    after its devices are gone, so its presence there says nothing)."""
    servers = [s.get("key", "") for s in tracker.summary()["server_info"]]
    return servers.count(f"server:{key}")


def ensure_local(cpu: str, count: int, key: str | None = None, log=print):
    """The local tracker when it already serves ``key``, else ``count`` emulated ``cpu``
    devices started now (with a tracker if none answers).

    Returns
    -------
    (Tracker, list)
        The tracker, and the process groups started here (the caller stops them with
        ``stop(pids=...)``; empty when nothing was started).
    """
    from .client import default_tracker

    key = key or get_profile(cpu).name
    tracker = default_tracker()
    if tracker.reachable() and serving(tracker, key):
        return tracker, []
    info = start(cpu, count, key=key, log=log)
    return Tracker(*parse_tracker(info["tracker"])), info["pids"]
