"""The plugin's block log (``insn_plugin.c`` with ``blocks=PATH``): each translation block's
bytes, and how often each ran up to each marker; read as it grows."""

from __future__ import annotations

import os
from pathlib import Path


class BlockLog:
    """A block log, read incrementally (:meth:`update`); ``blocks``: id -> bytes, ``marks``:
    token -> (block id -> executions up to that marker), for the tokens kept."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.blocks: dict[int, bytes] = {}
        self.marks: dict[int, dict[int, int]] = {}
        self._counts: dict[int, int] = {}
        self._token: int | None = None  # the marker whose C lines are being read
        self._keep: set[int] | None = None
        self._offset = 0

    @classmethod
    def read(cls, path: Path) -> BlockLog:
        """The whole log at once, every marker kept."""
        log = cls(path)
        log.update()
        return log

    def update(self, keep: set[int] | None = None) -> None:
        """Read what was appended since the last call (complete lines). ``keep``: the tokens
        whose counts to hold (None: every one); a marker's counts are its C lines."""
        if keep is not None:
            self._keep = (self._keep or set()) | keep
        try:
            size = os.path.getsize(self.path)
        except FileNotFoundError:
            return
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read(size - self._offset)
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].decode(errors="replace").splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "C":
                ident, _, n = rest.partition(" ")
                self._counts[int(ident)] = int(n)
            elif kind == "M":
                self._settle()
                self._token = int(rest)
            elif kind == "B":
                ident, _, hexes = rest.split(" ", 2)
                self.blocks[int(ident)] = bytes.fromhex(hexes)
        self._settle(closing=False)

    def _settle(self, closing: bool = True) -> None:
        t = self._token
        if t is not None and (self._keep is None or t in self._keep):
            self.marks[t] = dict(self._counts)
        if closing:
            self._token = None

    def between(self, a: int, b: int, forget: bool = False) -> dict[bytes, int]:
        """Executions of each block's bytes between markers ``a`` and ``b`` (``forget``:
        then drop both markers' counts)."""
        ca, cb = self.marks[a], self.marks[b]
        out: dict[bytes, int] = {}
        for ident, n in cb.items():
            d = n - ca.get(ident, 0)
            if d and ident in self.blocks:
                code = self.blocks[ident]
                out[code] = out.get(code, 0) + d
        if forget:
            for t in (a, b):
                self.marks.pop(t, None)
                if self._keep is not None:
                    self._keep.discard(t)
        return out


def per_call(first: dict[bytes, int], second: dict[bytes, int], calls: int) -> dict[bytes, float]:
    """Executions per call of each block: two runs' executions (``second`` of ``calls`` more
    calls than ``first``) differenced, so that what surrounds the calls cancels."""
    return {c: (second.get(c, 0) - first.get(c, 0)) / calls for c in {*first, *second}}
