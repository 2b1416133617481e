"""Client side of the RPC harness: a tracker, a device session from it, an artifact run."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from ..errors import UserError

DEFAULT_TRACKER = ("127.0.0.1", 9190)


def parse_tracker(text: str | None) -> tuple[str, int]:
    """``HOST:PORT``; by default ``$TVM_TRACKER_HOST``/``$TVM_TRACKER_PORT`` as TVM's tools,
    else 127.0.0.1:9190."""
    if not text:
        host = os.environ.get("TVM_TRACKER_HOST", DEFAULT_TRACKER[0])
        return host, int(os.environ.get("TVM_TRACKER_PORT", DEFAULT_TRACKER[1]))
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"tracker address must be HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)


class Tracker:
    """A TVM RPC tracker at ``host:port``, with one-line errors."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, int(port)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    def _connect(self):
        import socket

        from tvm import rpc

        try:  # TVM's own connect retries for a minute: refuse fast when nothing listens
            socket.create_connection((self.host, self.port), timeout=5).close()
            return rpc.connect_tracker(self.host, self.port)
        except Exception:
            raise UserError(f"tracker {self} is unreachable") from None

    def reachable(self) -> bool:
        try:
            self.summary()
            return True
        except UserError:
            return False

    def summary(self) -> dict:
        conn = self._connect()
        try:
            return conn.summary()
        except Exception:
            raise UserError(f"tracker {self} is unreachable") from None

    def free(self, key: str) -> int:
        return int(self.summary()["queue_info"].get(key, {}).get("free", 0))

    def request(self, key: str, timeout: float = 120.0, session_timeout: float = 0):
        """A remote session on a free device under ``key``.

        Raises
        ------
        UserError
            Unknown key (listing the known ones), or no device free within ``timeout``.
        """
        keys = sorted(self.summary()["queue_info"])
        if key not in keys:
            raise UserError(f"no device registered under key {key!r} at tracker {self} "
                            f"(keys: {', '.join(keys) or 'none'})")
        result: dict = {}

        def ask():
            try:
                result["sess"] = self._connect().request(
                    key, priority=1, session_timeout=session_timeout)
            except Exception as err:
                result["err"] = err

        th = threading.Thread(target=ask, daemon=True)
        th.start()
        th.join(timeout)
        if "sess" in result:
            return result["sess"]
        if "err" in result:
            raise UserError(f"could not get a device under key {key!r}: "
                            f"{str(result['err']).splitlines()[0]}")
        raise UserError(f"no free device under key {key!r} within {timeout:.0f} s")


def default_tracker() -> Tracker:
    """The tracker ``scripts/device.py start`` started here, else ``$TVM_TRACKER_HOST`` /
    ``$TVM_TRACKER_PORT``, else 127.0.0.1:9190."""
    import json

    from .sysroot import run_dir

    if "TVM_TRACKER_HOST" not in os.environ:
        try:
            for e in json.loads((run_dir() / "state.json").read_text()):
                if e["kind"] == "supervisor":
                    return Tracker(*parse_tracker(e["tracker"]))
        except (FileNotFoundError, ValueError, KeyError):
            pass
    return Tracker(*parse_tracker(None))


def check_compatible(manifest: dict, key: str) -> None:
    """Refuse an artifact whose target needs features the device under ``key`` lacks, when
    ``key`` names a known profile (as the emulated devices' keys do)."""
    from ..targets import PROFILES, get_profile

    tgt = manifest["target"]
    if not tgt["triple"].startswith("aarch64"):
        raise UserError(f"artifact is built for {tgt['name']} ({tgt['triple']}), not for an "
                        "aarch64 device")
    if key in PROFILES and key != "x86":
        dev = get_profile(key)
        missing = set(tgt["mattr"]) - set(dev.mattr)
        if missing:
            raise UserError(f"artifact is built for {tgt['name']} and uses "
                            f"{', '.join(sorted(missing))}, which the {key} device lacks")


def run_remote(folder: Path, inputs: list[np.ndarray], tracker: Tracker, key: str,
               timeout: float = 120.0) -> list[np.ndarray]:
    """Run an aarch64 artifact's ``main`` on a device from the tracker."""
    import tvm
    from tvm import relax

    from ..artifact import load

    manifest = load(folder)
    check_compatible(manifest, key)
    sess = tracker.request(key, timeout)
    lib_path = Path(folder) / manifest["library"]
    try:
        sess.upload(str(lib_path))
        rlib = sess.load_module(lib_path.name)
        dev = sess.cpu()
        vm = relax.VirtualMachine(rlib, dev)
        out = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in inputs])
        outs = [out] if isinstance(out, tvm.runtime.Tensor) else list(out)
        return [o.numpy() for o in outs]
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"the run on device {key!r} failed (did it crash? see the device "
                        f"log): {str(err).splitlines()[0]}") from None
