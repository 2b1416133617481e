"""``device.py status``: the trackers' queues and what was started here."""

from __future__ import annotations

import os

from . import state
from .client import Tracker, parse_tracker


def status() -> str:
    """The tracker's queue (per key: total, free, pending) and what ``start`` started (with
    the runs holding each supervisor, and its devices)."""
    entries = state.load()
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
        run = "running" if state.alive(e["pid"]) else "dead"
        if e["kind"] == "supervisor":
            what = f"{e['count']} x {e['cpu']} under key {e['key']}"
            if e.get("devices"):
                what += f"; devices {', '.join(map(str, e['devices']))}"
            if e.get("holders"):
                what += f"; used by run(s) {', '.join(map(str, e['holders']))}"
        else:
            what = f"tracker {e['host']}:{e['port']}"
        until = "until its runs end" if e.get("ephemeral") else "until device.py stop"
        lines.append(f"started here: {e['kind']} pid {e['pid']} ({what}): {run}, {until}")
    return "\n".join(lines)
