"""Supervisor of N emulated devices: starts TVM RPC servers under qemu and restarts the dead.

Run by :mod:`dgms_tvm.device.manager` as ``python -m dgms_tvm.device.supervisor ...`` in a
session of its own. Each server runs in its own process group (TVM's server forks a child per
session that outlives its parent), so a stop kills whole groups. A server that exits (a
crashed kernel, a killed process) is restarted and the event is logged; so is one whose
serving loop ended (TVM's server raises in its listening thread when a session's child dies
of a signal, and the process lives on, serving nothing: its log says so, :data:`LOOP_ENDED`),
and one that stays missing from the tracker for ``--grace`` seconds while its process lives.
Each device's process group is written into this supervisor's entry of the state file as it
starts (:mod:`dgms_tvm.device.state`), so that a stop finds the devices even after the
supervisor itself was killed. The supervisor holds the claims on its devices' ports
(descriptors inherited from the manager, see :mod:`dgms_tvm.device.ports`) for as long as it
runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _log(path: Path, msg: str) -> None:
    with open(path, "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")


def _registered_ports(host: str, port: int) -> set[int] | None:
    """Ports of servers the tracker knows, or None if it cannot be asked."""
    try:
        from tvm import rpc

        info = rpc.connect_tracker(host, port).summary()["server_info"]
        return {int(s["addr"][1]) for s in info if "addr" in s}
    except Exception:  # tracker briefly busy or gone: ask again next round
        return None


def counts_path(folder_file: Path, key: str, supervisor: int, index: int) -> Path:
    """The instruction-count file of device ``index`` of supervisor ``supervisor``, beside
    ``folder_file`` (the events log)."""
    return folder_file.with_name(f"insn-{key}-{supervisor}-{index}.txt")


_STOPPING = False
#: What TVM's RPC server logs as its listening thread ends on a session child that failed.
LOOP_ENDED = b"exited unsuccessfully with error code"
POLL_S = 5.0  # how often the tracker is asked which devices it knows


def _record_devices(devices) -> None:
    """Write the devices' process groups into this supervisor's state entry (not waiting
    for the lock once a stop was asked: whoever holds it may be the one stopping us)."""
    from .state import Abandoned, locked

    try:
        with locked(signals_held=False, keep_waiting=lambda: not _STOPPING) as entries:
            for e in entries:
                if e.get("kind") == "supervisor" and e.get("pid") == os.getpid():
                    e["devices"] = [d.proc.pid for d in devices if d.proc is not None]
    except Abandoned:
        pass


class Device:
    def __init__(self, args, index: int):
        self.args, self.index = args, index
        self.port = args.port_base + index
        self.proc: subprocess.Popen | None = None
        self.missing_since: float | None = None
        self.log = Path(args.log).with_name(f"device-{args.key}-{index}.log")
        self.log_seen = 0  # how far loop_ended has read its log
        self.log_tail = b""  # the end of what it read (a message cut between two reads)

    def _logs(self) -> tuple[Path, Path]:
        """Its instruction-count file and block log (what ran: the cycle estimate, insn.py).
        The names hold this supervisor's pid: another supervisor under the same key (another
        tracker, or one left by a killed run) never writes or removes them."""
        counts = counts_path(Path(self.args.log), self.args.key, os.getpid(), self.index)
        return counts, counts.with_suffix(".blocks")

    def forget(self) -> None:
        """Remove its logs once it is gone: nothing reads them after its runs (a block log
        grows by megabytes per run)."""
        for f in self._logs():
            f.unlink(missing_ok=True)

    def start(self) -> None:
        a = self.args
        env = dict(os.environ, QEMU_CPU=a.cpu, TVM_NUM_THREADS=str(a.threads))
        if a.plugin:
            # Instruction counts of this device (see dgms_tvm.device.insn); fresh files per
            # start, so tokens of a dead process cannot be read back.
            self.forget()
            counts, blocks = self._logs()
            env["QEMU_PLUGIN"] = f"{a.plugin},out={counts},blocks={blocks}"
        cmd = [a.guest_python, "-m", "tvm.exec.rpc_server", "--tracker", a.tracker,
               "--key", a.key, "--host", "127.0.0.1", "--port", str(self.port),
               "--port-end", str(self.port + 1), "--load-library", a.runtime_extra]
        log = open(self.log, "a")
        self.log_seen, self.log_tail = log.tell(), b""
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.missing_since = None
        _record_devices(self.args.devices)

    def loop_ended(self) -> bool:
        """Whether its server's log says, since it started, that its serving loop ended."""
        try:
            with open(self.log, "rb") as f:
                f.seek(self.log_seen)
                new = f.read()
        except OSError:
            return False
        seen = self.log_tail + new
        self.log_seen += len(new)
        self.log_tail = seen[-len(LOOP_ENDED):]
        return LOOP_ENDED in seen

    def kill(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tracker", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--cpu", required=True)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--port-base", type=int, required=True)
    p.add_argument("--guest-python", required=True)
    p.add_argument("--runtime-extra", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log", required=True)
    p.add_argument("--grace", type=float, default=90.0)
    p.add_argument("--plugin", help="instruction-count TCG plugin (.so)")
    args = p.parse_args(argv)
    host, port = args.tracker.rsplit(":", 1)
    devices = [Device(args, i) for i in range(args.count)]
    args.devices = devices
    stopping = False

    def stop(*_):
        # The devices go at once, in the handler: the loop may be busy for a while (asking a
        # loaded tracker, importing tvm), and a supervisor killed before it ends them would
        # leave them running (each is a session of its own).
        nonlocal stopping
        global _STOPPING
        stopping = _STOPPING = True
        for d in devices:
            d.kill()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for d in devices:
        d.start()
    _log(Path(args.log), f"supervisor {os.getpid()}: started {args.count} {args.cpu} "
                         f"device(s) under key {args.key}")
    started = asked = time.monotonic()
    while not stopping:
        time.sleep(1.0)
        # The tracker is asked every few seconds only: it accepts one connection at a time
        # (a listen backlog of 1), and runs' own requests must not queue behind ours.
        ask = time.monotonic() - started > 60 and time.monotonic() - asked >= POLL_S
        ports = _registered_ports(host, int(port)) if ask else None
        asked = time.monotonic() if ask else asked
        for d in devices:
            if stopping:  # (no restart of a device the handler has just ended)
                break
            code = d.proc.poll()
            if code is not None:
                _log(Path(args.log), f"device {args.key}#{d.index} (port {d.port}) exited with "
                                     f"code {code}; restarting")
                d.kill()
                d.start()
                continue
            if d.loop_ended():
                _log(Path(args.log), f"device {args.key}#{d.index} (port {d.port}): its "
                                     "serving loop ended (a session's process died); "
                                     "restarting")
                d.kill()
                d.start()
                continue
            if ports is None:  # (not asked this round, or no answer: no news)
                continue
            if d.port in ports:
                d.missing_since = None
            elif d.missing_since is None:
                d.missing_since = time.monotonic()
            elif time.monotonic() - d.missing_since > args.grace:
                _log(Path(args.log), f"device {args.key}#{d.index} (port {d.port}) alive but "
                                     f"unregistered for {args.grace:.0f} s; restarting")
                d.kill()
                d.start()
    for d in devices:
        d.kill()
        d.forget()
    _log(Path(args.log), f"supervisor {os.getpid()}: stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
