"""The int8 strategy's weights at compile time: a layer's codebook as int8 entries with one
scale (:func:`quantize_codebook`), a float32 weight as int8 per output channel
(:func:`quantize_weight`), and what an unsigned (+128) input adds to each channel's sums
(:func:`correction`).

The codebook becomes int8 entries ``q = round(codebook / s_cb)``, ``s_cb`` the scale near
``max|codebook| / 127`` that rounds its entries best (:func:`codebook_scale`; entry 0 stays
exactly 0), and the per-channel factor ``D[o] = s_cb * scale[o]`` (``scale`` is the folded
BatchNorm, 1 without one) is applied to the output, so one 2^b-entry table serves every
channel.
"""

from __future__ import annotations

import numpy as np

from .quantize import TINY


def quantize_weight(w: np.ndarray, limit: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """A float32 weight ``[O, C, kh, kw]`` (a layer that is no codebook, such as the stem) as
    int8 per output channel, symmetric: ``(q, s)`` with ``w ~ q * s[o]``, ``s[o] =
    max|w[o]| / limit``; ``s`` is the conv's ``D`` operand. ``limit``: the largest
    magnitude (63 for the widening kernel, :mod:`..widening`)."""
    w = np.asarray(w, np.float32)
    level = np.maximum(np.abs(w).reshape(w.shape[0], -1).max(axis=1), TINY)
    s = (level / np.float32(limit)).astype(np.float32)
    q = np.clip(np.rint(w / s[:, None, None, None]), -limit, limit)
    return q.astype(np.int8), s

def quantize_codebook(codebook: np.ndarray, scale: np.ndarray | None,
                      out_channels: int, limit: int = 127,
                      indices: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codebook entries within +-``limit``, float32 per-channel output factor
    ``D``). The entries' scale ``s_cb`` is the one of :func:`codebook_scale`, each entry
    weighed by how many of the layer's ``indices`` use it (alike where None)."""
    cb = np.asarray(codebook, np.float64)
    counts = None if indices is None else np.bincount(np.asarray(indices).ravel(),
                                                      minlength=len(cb))[:len(cb)]
    s_cb = codebook_scale(cb, limit, counts)
    q = np.clip(np.rint(cb / s_cb), -limit, limit).astype(np.int8)
    d = np.full(out_channels, s_cb) * (1.0 if scale is None else np.asarray(scale, np.float64))
    return q, d.astype(np.float32)

#: The grid of scales :func:`codebook_scale` tries, as multiples of ``max|codebook| /
#: limit``: below 1 the largest entry is clipped; at 2 it gets half the levels max-abs gives.
SCALE_SEARCH = np.linspace(0.9, 2.0, 1101)

def codebook_scale(codebook: np.ndarray, limit: int, counts: np.ndarray | None = None) -> float:
    """The int8 scale of a codebook: the one whose rounded entries (clipped to +-``limit``)
    are nearest the entries by squared error, each weighed by how many weights use it
    (``counts``; one each where None). Tried: :data:`SCALE_SEARCH` times ``max|codebook| /
    limit``, every scale that puts one entry exactly on a level in that range, then the
    least-squares scale of the best one's levels (kept where it rounds no worse). A
    codebook has at most 16 entries against ``2 * limit + 1`` levels, so one scale can land
    most of them near a level, where max-abs (``max / limit``) leaves each off by up to half
    a step (docs/kernels.md has the error it takes off). 1.0 for an all-zero codebook."""
    cb = np.asarray(codebook, np.float64)
    top = float(np.abs(cb).max())
    if top == 0:
        return 1.0
    n = np.ones(len(cb)) if counts is None else np.asarray(counts, np.float64)
    lo, hi = top / limit * SCALE_SEARCH[0], top / limit * SCALE_SEARCH[-1]
    mags = np.abs(cb[cb != 0])
    levels = np.arange(1, limit + 1, dtype=np.float64)
    exact = (mags[:, None] / levels[None, :]).ravel()
    cands = np.concatenate([top / limit * SCALE_SEARCH, exact[(exact >= lo) & (exact <= hi)]])

    def errors(s):
        q = np.clip(np.rint(cb / s[:, None]), -limit, limit)
        return ((cb - q * s[:, None]) ** 2 * n).sum(axis=1), q

    err, q = errors(cands)
    i = int(np.lexsort((cands, err))[0])  # the least error; the smallest scale on a tie
    best, best_err = cands[i], err[i]
    w = (n * q[i] * q[i]).sum()
    if w > 0:  # the least-squares scale of those levels
        ls = np.array([(n * q[i] * cb).sum() / w])
        if errors(ls)[0][0] < best_err:
            best = ls[0]
    return float(best)

def q16(q_codebook: np.ndarray) -> np.ndarray:
    """The int8 codebook padded to the 16 entries of a table lookup."""
    out = np.zeros(16, np.int8)
    out[:len(q_codebook)] = q_codebook
    return out

def correction(indices: np.ndarray, q_codebook: np.ndarray) -> np.ndarray:
    """``int32[O]``: ``128 * sum_k Wq[o, k]``, what an unsigned (+128) input adds to each
    output channel's sums (padding and padded channels hold 128 too, and meet weight 0 or
    their real weight: the window always covers every weight)."""
    return weight_correction(np.asarray(q_codebook)[np.asarray(indices)])

def weight_correction(wq: np.ndarray) -> np.ndarray:
    """:func:`correction` from the int8 weight ``[O, C, kh, kw]`` itself."""
    w = np.asarray(wq, np.int64)
    return (128 * w.reshape(w.shape[0], -1).sum(axis=1)).astype(np.int32)
