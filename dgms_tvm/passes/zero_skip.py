"""Zero skipping at channel level, with its cost model."""

from __future__ import annotations

import numpy as np
from tvm import relax

from ..format import CodebookWeight


def skip_zero_inputs(rw, x, cw, value, rec, cost):
    """Zero skipping at channel level: the input channels (conv2d) or features (dense)
    whose weights are all exactly zero (DGMS's pinned component, in every output channel
    and window position) are dropped at compile time and the layer's input gathered down
    to the rest (one ``take``). Stated cost model: it pays where the multiply-adds it
    removes outnumber the input values the ``take`` copies; ``cost(n)`` gives both for
    ``n`` dropped. ``rw``: the rewriter (its policy, and its builder to emit the ``take``).
    Returns ``(x, cw, value)``, unchanged where nothing is dropped."""
    if cw is None or not rw.policy.zero_skip:
        return x, cw, value
    w = cw.dense()
    zero = ~w.reshape(w.shape[0], w.shape[1], -1).any(axis=(0, 2))
    n = int(zero.sum())
    if n == 0 or n == zero.size:
        return x, cw, value
    saved, copied = cost(n)
    if saved <= copied:
        rec.reason = (f"{n} all-zero input channels kept: dropping them saves {saved} "
                      f"multiply-adds, copying the rest costs {copied}")
        return x, cw, value
    keep = np.flatnonzero(~zero)
    axis = 1 if w.ndim == 4 else -1
    x = rw.builder_.emit(relax.op.take(x, relax.const(keep.astype(np.int64)), axis=axis))
    cw = CodebookWeight.from_indices(cw.indices().take(keep, axis=1), cw.codebook, cw.bits,
                                     scale=cw.scale)
    rec.zero_inputs, rec.packed_bytes = n, cw.nbytes
    return x, cw, np.ascontiguousarray(value.take(keep, axis=1))
