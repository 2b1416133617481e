"""Dynamic instruction counts on the emulated device: the noise-free ARM speed proxy.

The devices run under a TCG plugin of ours (``insn_plugin.c``), built by the set-up against
``qemu-plugin.h`` from Debian's qemu source package (Debian ships no plugin header). The
plugin counts every guest instruction and logs the running count when the guest closes a
marker descriptor. A tiny aarch64 module (one TIR function calling ``close``) is uploaded to
the device to place markers around a run, so counts are taken inside the serving process:

    per call = (count over n2 calls - count over n1 calls) / (n2 - n1)

which cancels the RPC and timer overheads around the calls.
"""

from __future__ import annotations

import glob
import hashlib
import os
import secrets
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from ..errors import UserError
from .blocks import BlockLog, per_call
from .sysroot import cache_dir, run_dir

MARKER_BASE = 0x44470000
MARKER_SPAN = 0x10000  # as the plugin's range
PLUGIN_SOURCE = Path(__file__).with_name("insn_plugin.c")


def blocks_path(counts: Path) -> Path:
    """The block log (executions per translation block, :mod:`.blocks`) beside a device's
    count file."""
    return counts.with_suffix(".blocks")


def plugin_path() -> Path:
    """The plugin built from this source: one file per source version, so that a rebuild
    never replaces a plugin that running devices have loaded."""
    digest = hashlib.sha1(PLUGIN_SOURCE.read_bytes()).hexdigest()[:12]
    return cache_dir() / "plugin" / f"libdgmsinsn-{digest}.so"


def _deb_src_enabled() -> bool:
    out = subprocess.run(["apt-get", "indextargets", "--format", "$(CREATED_BY)"],
                         capture_output=True, text=True).stdout
    return "Sources" in out


def _enable_deb_src() -> None:
    """Add deb-src entries mirroring the machine's own Debian sources, then update."""
    src = Path("/etc/apt/sources.list.d/debian.sources")
    if not src.exists():
        raise UserError("no deb-src entry and no /etc/apt/sources.list.d/debian.sources to "
                        "derive one from: add a deb-src line for Debian, then re-run setup")
    text = src.read_text().replace("Types: deb\n", "Types: deb-src\n")
    Path("/etc/apt/sources.list.d/dgms-tvm-deb-src.sources").write_text(text)
    subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)


def _fetch_header(header: Path) -> None:
    """``qemu-plugin.h`` from Debian's qemu source package (Debian ships no plugin header),
    kept beside the plugins."""
    if os.geteuid() == 0 and not _deb_src_enabled():
        _enable_deb_src()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(["apt-get", "source", "--download-only", "-q", "qemu"], cwd=tmp,
                              capture_output=True, text=True)
        origs = glob.glob(f"{tmp}/qemu_*.orig.tar.*")
        if proc.returncode or not origs:
            raise UserError("could not download Debian's qemu source (apt-get source qemu): "
                            + ((proc.stderr or "").strip().splitlines() or ["no output"])[-1])
        with tarfile.open(origs[0]) as tf:
            member = next(m for m in tf.getmembers()
                          if m.name.endswith("include/qemu/qemu-plugin.h"))
            member.name = header.name
            tf.extract(member, tmp, filter="data")
        part = header.with_suffix(f".{os.getpid()}.part")
        shutil.copyfile(Path(tmp) / header.name, part)
        os.replace(part, header)


def ensure_plugin(log=print) -> Path:
    """Build the instruction-count plugin if missing; return its path."""
    out = plugin_path()
    if out.exists():
        return out
    if shutil.which("gcc") is None:
        raise UserError("gcc not found: it builds the instruction-count plugin")
    log("building the qemu instruction-count plugin")
    out.parent.mkdir(parents=True, exist_ok=True)
    header = out.parent / "qemu-plugin.h"
    if not header.exists():
        _fetch_header(header)
    part = out.with_suffix(f".{os.getpid()}.part")  # whole or not at all
    build = subprocess.run(["gcc", "-shared", "-fPIC", "-O2", f"-I{header.parent}", "-o",
                            str(part), str(PLUGIN_SOURCE)], capture_output=True, text=True)
    if build.returncode:
        part.unlink(missing_ok=True)
        raise UserError(f"building the plugin failed: {build.stderr.strip()[:200]}")
    os.replace(part, out)
    return out


def marker_library(profile, folder: Path) -> Path:
    """An aarch64 module exporting ``dgms_marker(token)``: ``close(MARKER_BASE + token)``."""
    import tvm
    from tvm.script import tirx as T

    @T.prim_func
    def dgms_marker(token: T.int32):
        T.evaluate(T.call_extern("int32", "close", token + MARKER_BASE))

    path = folder / "dgms_marker.so"
    if not path.exists():
        lib = tvm.compile(tvm.IRModule({"dgms_marker": dgms_marker.with_attr(
            "global_symbol", "dgms_marker")}), target=profile.tvm_target())
        lib.export_library(str(path), fcompile=profile.cross_compiler())
    return path


class Counter:
    """Instruction counts of remote calls on one emulated-device session.

    Several devices (and sessions) may log under one key at once, each to its own file; the
    first marker tells which file is this session's, and later markers are read from that
    file only, with tokens in sequence so that none repeats within the session."""

    ENV_KEY, ENV_LIB, ENV_CYCLES = "DGMS_COUNT_KEY", "DGMS_COUNT_MARKER", "DGMS_COUNT_CYCLES"

    def __init__(self, sess, profile, key: str, workdir: Path | None, lib: Path | None = None):
        self.key = key
        # Counts logged before this session (earlier runs) are not ours: read past them.
        self._start = {f: os.path.getsize(f) for f in self._files()}
        lib = lib or marker_library(profile, workdir)
        sess.upload(str(lib), "dgms_marker.so")
        self._mark = sess.load_module("dgms_marker.so")["dgms_marker"]
        self._file: str | None = None
        self._token = secrets.randbelow(MARKER_SPAN)
        while self._file is None:  # two sessions may pick the same first token: pick again
            tok = self._next()
            self._mark(tok)
            hits = self._find(tok)
            if len(hits) == 1:
                self._file = hits[0][0]
        # the device's block log (blocks_path), where it keeps one: executions per block
        blocks = blocks_path(Path(self._file))
        self._blocks = BlockLog(blocks) if blocks.exists() else None
        #: Executions of each block (by its bytes) per call in the last :meth:`per_call`;
        #: None where the device keeps no block log.
        self.executions: dict[bytes, float] | None = None
        self._last: dict[bytes, int] = {}

    @classmethod
    def prepare_env(cls, profile, key: str, workdir: Path, cycles: bool = False) -> None:
        """Build the marker library and say where it is (and the device key; with
        ``cycles``, the core whose model weighs the blocks) in the environment, for
        processes that will count (MetaSchedule's runner workers)."""
        Path(workdir).mkdir(parents=True, exist_ok=True)
        os.environ[cls.ENV_LIB] = str(marker_library(profile, Path(workdir)))
        os.environ[cls.ENV_KEY] = key
        if cycles:
            os.environ[cls.ENV_CYCLES] = profile.mcpu
        else:
            os.environ.pop(cls.ENV_CYCLES, None)

    @classmethod
    def from_env(cls, sess) -> Counter:
        return cls(sess, None, os.environ[cls.ENV_KEY], None, lib=Path(os.environ[cls.ENV_LIB]))

    def _files(self) -> list[str]:
        return glob.glob(str(run_dir() / f"insn-{self.key}-*.txt"))

    def _next(self) -> int:
        self._token = (self._token + 1) % MARKER_SPAN
        return self._token

    def _lines(self, f: str) -> list[str]:
        try:
            with open(f, "rb") as fh:
                start = self._start.get(f, 0)
                fh.seek(start if start <= os.path.getsize(f) else 0)
                return fh.read().decode(errors="replace").splitlines()
        except FileNotFoundError:  # its device restarted (a fresh file) or its run ended
            return []

    def _find(self, token: int, timeout: float = 10.0) -> list[tuple[str, int]]:
        deadline = time.monotonic() + timeout
        while True:
            hits = []
            for f in [self._file] if self._file else self._files():
                for line in self._lines(f):
                    tok, _, count = line.partition(" ")
                    if tok == str(token):
                        hits.append((f, int(count)))
            if hits or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if not hits:
            raise UserError(self._why_no_count(token, timeout))
        return hits

    def _why_no_count(self, token: int, timeout: float) -> str:
        """The error for a marker that no counter file shows: counting off on the devices
        under the key, or on and the count lost (the device restarted, its file gone)."""
        from .state import load

        sups = [e for e in load() if e.get("kind") == "supervisor" and e.get("key") == self.key]
        if sups and not any(e.get("instruction_counts") for e in sups):
            return (f"the devices under key {self.key!r} run without instruction counting "
                    f"(restart them with scripts/device.py start --cpu {sups[0]['cpu']})")
        where = self._file or f"{run_dir()}/insn-{self.key}-*.txt"
        return (f"marker {token} of this session on device {self.key!r} is in no counter "
                f"file ({where}) after {timeout:.0f} s: the device restarted mid-session, or "
                f"its file was removed (events in {run_dir()}/events.log)")

    def between(self, fn) -> int:
        """Instructions the device executed while ``fn()`` ran (plus fixed RPC overhead);
        with a block log, each block's executions then are in ``self._last``."""
        a, b = self._next(), self._next()
        self._mark(a)
        fn()
        self._mark(b)
        count = self._find(b)[-1][1] - self._find(a)[-1][1]
        if self._blocks is not None:  # written before the count line that _find saw
            self._blocks.update(keep={a, b})
            self._last = self._blocks.between(a, b, forget=True)
        return count

    def per_call(self, evaluator_factory, n1: int = 1, n2: int = 3) -> float:
        """Instructions per call: counts over ``n1`` and ``n2`` calls of a remote
        ``time_evaluator`` (``evaluator_factory(number)``), differenced; with a block log,
        each block's executions per call likewise (``self.executions``)."""
        c1 = self.between(evaluator_factory(n1))
        e1 = self._last
        c2 = self.between(evaluator_factory(n2))
        if self._blocks is not None:
            e2 = self._last
            self.executions = per_call(e1, e2, n2 - n1)
        return (c2 - c1) / (n2 - n1)
