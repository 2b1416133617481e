"""Start, share, inspect and stop a TVM RPC tracker and emulated Cortex-A devices behind it.

``start`` uses a tracker already listening at the address (a user's board farm), one started
here before, or starts one on loopback; then a supervisor that runs N qemu-emulated RPC
servers registered under a key (by default the CPU name). There is one supervisor per key
(and tracker): a second ``start`` under the key reuses it, waiting until its devices are
registered. Everything is recorded in the state file (:mod:`dgms_tvm.device.state`, under
its lock) as it is started, so that ``stop`` finds exactly that, by process group.

A run (a benchmark, a tuning run) takes its devices with :func:`local_devices`: it *holds*
the supervisor it found or started, and lets go at the end. Devices a run started for itself
are *ephemeral*: they stop when their last holder lets go (another run may still be using
them when the first ends). Devices it found running from ``device.py start`` stay running.
A holder that died without letting go (SIGKILL) is dropped by the next command, and an
ephemeral supervisor it alone held is stopped then.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

from ..errors import UserError
from ..targets import get_profile
from . import ports, state
from .client import Tracker, parse_tracker
from .insn import ensure_plugin
from .sysroot import ensure_sysroot, run_dir

REGISTER_TIMEOUT_S = 240.0
#: Emulated devices one start may run per host core (each is a busy qemu process).
DEVICES_PER_CORE = 2


def max_devices() -> int:
    return DEVICES_PER_CORE * (os.cpu_count() or 1)


def check_count(count: int, flag: str = "--count") -> None:
    """Refuse a device count below 1 or above :func:`max_devices`."""
    if count < 1:
        raise UserError(f"{flag} must be at least 1")
    if count > max_devices():
        raise UserError(f"{flag} {count} is more emulated devices than this host can run: at "
                        f"most {max_devices()} ({DEVICES_PER_CORE} per core, "
                        f"{os.cpu_count()} cores)")


def start(cpu: str, count: int = 1, tracker: str | None = None, key: str | None = None,
          threads: int = 1, log=print, wait: bool = True, counting: bool = True,
          holder: int | None = None) -> dict:
    """``count`` emulated ``cpu`` devices under ``key``: the running ones under the key if
    any (reused), else started now (with a tracker if none answers).

    ``holder``: the process id of a run that takes the devices for itself (it calls
    :func:`release` at the end; devices started for it are ephemeral). Without one the
    devices stay until :func:`stop` (``device.py start``). A failure or Ctrl-C in here
    stops what this call started.

    Returns
    -------
    dict
        ``{"tracker": "HOST:PORT", "key", "count", "pids": [...], "reused": bool,
        "instruction_counts": bool}`` (``pids``: the process groups this call started).
    """
    profile = get_profile(cpu)
    if not profile.is_arm or profile.qemu_cpu is None:
        raise UserError(f"{cpu} is not an emulated Cortex-A profile")
    check_count(count)
    key = key or profile.name
    addr = None
    if tracker:
        host, port = parse_tracker(tracker)
        addr = f"{host}:{port}"
    sysroot = ensure_sysroot(log=log)
    plugin = None
    if counting:
        try:
            plugin = ensure_plugin(log=log)
        except UserError as err:
            log(f"warning: no instruction counts on these devices ({err})")
    info = {"key": key, "pids": [], "reused": False}
    try:
        with state.locked() as entries:
            _prune(entries, log)
            sup = next((e for e in entries if e["kind"] == "supervisor" and e["key"] == key
                        and (addr is None or e["tracker"] == addr)), None)
            if sup is None:
                sup = _start_supervisor(entries, info, profile, count, addr, key, threads,
                                        sysroot, plugin, holder, log)
            else:
                info["reused"] = True
                if holder is not None:
                    sup.setdefault("holders", []).append(holder)
                else:  # device.py start: the devices stay until device.py stop
                    sup["ephemeral"] = False
                    for e in entries:
                        if e["kind"] == "tracker" and _addr(e) == sup["tracker"]:
                            e["ephemeral"] = False
        info.update(tracker=sup["tracker"], count=sup["count"],
                    instruction_counts=sup.get("instruction_counts", False))
        if info["reused"]:
            if sup["count"] < count:
                log(f"note: key {key!r} already runs {sup['count']} device(s) (fewer than "
                    f"the {count} asked): using them (stop them first for more)")
            log(f"using the {sup['count']} emulated {sup['cpu']} device(s) running under key "
                f"{key!r} (tracker {sup['tracker']})")
        else:
            log(f"starting {count} emulated {cpu} device(s) under key {key!r} (tracker "
                f"{sup['tracker']}); events in {run_dir() / 'events.log'}")
        if wait:
            wait_for_devices(Tracker(*parse_tracker(sup["tracker"])), key,
                             min(count, sup["count"]), pid=sup["pid"], registered=True)
    except BaseException:  # an error or Ctrl-C: undo this call (no devices left behind)
        with contextlib.suppress(Exception):
            if holder is not None:
                release(holder, log=lambda *_: None)
            if info["pids"]:
                stop(log=lambda *_: None, pids=info["pids"])
        raise
    return info


def _addr(entry: dict) -> str:
    return f"{entry['host']}:{entry['port']}"


def _start_supervisor(entries, info, profile, count, addr, key, threads, sysroot, plugin,
                      holder, log) -> dict:
    """Under the state lock: the tracker (found or started), then the supervisor, each
    recorded as it starts."""
    host, port = parse_tracker(addr) if addr else ("127.0.0.1", None)
    ours = next((e for e in entries if e["kind"] == "tracker"
                 and (addr is None or _addr(e) == addr)), None)
    if port is None and ours is not None:
        host, port = ours["host"], ours["port"]
    if port is None or not Tracker(host, port).reachable():
        if addr and host not in ("127.0.0.1", "localhost"):
            raise UserError(f"tracker {host}:{port} is unreachable")
        proc, port = ports.spawn_tracker(host, port)
        entries.append({"kind": "tracker", "pid": proc.pid, "host": host, "port": port,
                        "ephemeral": holder is not None})
        info["pids"].append(proc.pid)
        state.save(entries)  # recorded before it is waited for
        ports.wait_tracker(proc, host, port)
        log(f"started a tracker on {host}:{port}")
    elif ours is not None and holder is None:
        ours["ephemeral"] = False
    taken = {e["port_base"] + i for e in entries if e["kind"] == "supervisor"
             for i in range(e["count"])}
    base, fds = ports.claim_ports(ports.DEVICE_PORT, count, taken)
    sup_log = run_dir() / "events.log"
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dgms_tvm.device.supervisor", "--tracker", f"{host}:{port}",
             "--key", key, "--cpu", profile.qemu_cpu, "--count", str(count),
             "--port-base", str(base), "--guest-python", str(sysroot.python),
             "--runtime-extra", str(sysroot.runtime_extra), "--threads", str(threads),
             "--log", str(sup_log), *(["--plugin", str(plugin)] if plugin else [])],
            stdout=open(run_dir() / "supervisor.log", "a"), stderr=subprocess.STDOUT,
            start_new_session=True, pass_fds=fds,
            env=dict(os.environ, DGMS_TVM_RUN_DIR=str(run_dir())))
    finally:
        ports.release_fds(fds)
    sup = {"kind": "supervisor", "pid": proc.pid, "key": key, "cpu": profile.name,
           "count": count, "port_base": base, "tracker": f"{host}:{port}",
           "instruction_counts": plugin is not None, "ephemeral": holder is not None,
           "holders": [] if holder is None else [holder], "devices": []}
    entries.append(sup)
    info["pids"].append(proc.pid)
    return sup


def wait_for_devices(tracker: Tracker, key: str, count: int, proc=None,
                     timeout: float = REGISTER_TIMEOUT_S, pid: int | None = None,
                     registered: bool = False) -> None:
    """Wait until ``count`` devices under ``key`` are free (``registered``: registered,
    free or busy: devices another run is using count), while their supervisor (``proc`` or
    ``pid``) lives."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (proc is not None and proc.poll() is not None) or (pid and not state.alive(pid)):
            raise UserError(f"the device supervisor exited (see {run_dir()})")
        if (serving(tracker, key) if registered else tracker.free(key)) >= count:
            return
        time.sleep(1.0)
    raise UserError(f"{count} device(s) under key {key!r} did not register within "
                    f"{timeout:.0f} s (logs in {run_dir()})")


def release(holder: int, log=print) -> int:
    """Let go of the devices ``holder`` took; stop the ephemeral ones nobody holds now (and
    a tracker started for them that nothing else uses). Returns the groups stopped."""
    with state.locked() as entries:
        for e in entries:
            if e["kind"] == "supervisor" and holder in e.get("holders", []):
                e["holders"].remove(holder)
        n = _prune(entries, log)
    if n:
        log(f"stopped {n} process group(s)")
    return n


def _prune(entries: list[dict], log) -> int:
    """Under the lock: drop dead entries and dead holders; stop ephemeral supervisors that
    nobody holds, then ephemeral trackers that no supervisor uses. Returns groups stopped."""
    n = 0
    for e in [e for e in entries if e["kind"] == "supervisor"]:
        e["holders"] = [h for h in e.get("holders", []) if state.alive(h)]
        if not state.alive(e["pid"]) or (e.get("ephemeral") and not e["holders"]):
            n += _stop_entry(e)
            entries.remove(e)
    used = {e["tracker"] for e in entries if e["kind"] == "supervisor"}
    for e in [e for e in entries if e["kind"] == "tracker"]:
        if not state.alive(e["pid"]) or (e.get("ephemeral") and _addr(e) not in used):
            n += _stop_entry(e)
            entries.remove(e)
    return n


def _stop_entry(e: dict) -> int:
    """Stop one recorded process group (a supervisor's devices too). Returns 1 if it ran."""
    n = int(state.kill_group(e["pid"]))
    for dev in e.get("devices", []):  # normally gone with their supervisor
        state.kill_group(dev, grace=2.0)
    return n


def stop(log=print, pids=None) -> int:
    """Stop everything started here (supervisors first, then trackers), or only the process
    groups ``pids``; a tracker that a supervisor left running still uses stays. Returns how
    many process groups were stopped."""
    with state.locked() as entries:
        chosen = entries if pids is None else [e for e in entries if e["pid"] in set(pids)]
        rest = [e for e in entries if e not in chosen]
        in_use = {e["tracker"] for e in rest if e["kind"] == "supervisor"
                  and state.alive(e["pid"])}
        chosen = [e for e in chosen if e["kind"] != "tracker" or _addr(e) not in in_use]
        n = 0
        for kind in ("supervisor", "tracker"):
            for e in [e for e in chosen if e["kind"] == kind]:
                n += _stop_entry(e)
                entries.remove(e)
    log(f"stopped {n} process group(s)")
    return n


def serving(tracker: Tracker, key: str) -> int:
    """How many devices are registered under ``key`` (a key stays in the tracker's queue
    after its devices are gone, so its presence there says nothing)."""
    servers = [s.get("key", "") for s in tracker.summary()["server_info"]]
    return servers.count(f"server:{key}")


@contextlib.contextmanager
def local_devices(cpu: str, count: int, key: str | None = None, log=print):
    """Emulated ``cpu`` devices under ``key`` for this run: the running ones (reused, left
    running after) or ``count`` started now (stopped after, once no other run holds them).

    Yields
    ------
    (Tracker, dict)
        The tracker, and :func:`start`'s answer (``instruction_counts`` among it).
    """
    holder = os.getpid()
    info = start(cpu, count, key=key, log=log, holder=holder)
    try:
        yield Tracker(*parse_tracker(info["tracker"])), info
    finally:
        release(holder, log=log)
