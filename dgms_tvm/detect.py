"""Recognise a codebook weight from its values.

Two shapes are recognised:

* **plain**: the whole tensor holds at most ``2**bits - 1`` distinct non-zero values (DGMS's
  hard-assigned weights: one mixture per layer, entry 0 the pinned zero);
* **scaled**: every output channel is a scaled copy of one shared codebook, which is what an
  exporter that folds BatchNorm into the conv produces (``w'[o] = w[o] * gamma[o] / std[o]``).
  The shared codebook and one scale per output channel are recovered and then *verified*:
  ``scale[o] * codebook[idx]`` must reproduce every weight to float32 rounding, so a wrong
  guess can only cause a skip, never a wrong kernel.
"""

from __future__ import annotations

import numpy as np

from .format import SUPPORTED_BITS, CodebookWeight, check_bits

# Relative error allowed between a weight and its reconstruction. Folding a BatchNorm rounds
# every product once in float32 (~6e-8) and the rebuilt scale*entry rounds twice more; 2e-6
# (about 16 ulps) leaves room for exporters that fold in another order.
REL_TOL = 2e-6


class NotACodebook(ValueError):
    """The weight is not a codebook of the requested width; ``str()`` says why."""


def smallest_bits(n_nonzero: int) -> int | None:
    """Smallest supported width whose codebook holds ``n_nonzero`` values plus the zero."""
    for b in SUPPORTED_BITS:
        if n_nonzero <= (1 << b) - 1:
            return b
    return None


def _plain(w2: np.ndarray, bits: int | None) -> CodebookWeight:
    values = np.unique(w2)
    nonzero = values[values != 0]
    need = smallest_bits(nonzero.size)
    if need is None or (bits is not None and need > bits):
        raise NotACodebook(
            f"{nonzero.size} distinct non-zero values"
            + (f" (more than {(1 << bits) - 1} for {bits} bits)" if bits else "")
        )
    bits = need
    codebook = np.concatenate([[0.0], nonzero]).astype(np.float32)
    idx = np.searchsorted(codebook[1:], w2) + 1
    idx[w2 == 0] = 0
    return CodebookWeight.from_indices(idx, codebook, bits)


def _nearest(sorted_cb: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index into ``sorted_cb`` of the entry nearest each ``q``, and the relative distance."""
    hi = np.clip(np.searchsorted(sorted_cb, q), 1, sorted_cb.size - 1) if sorted_cb.size > 1 else (
        np.zeros(q.shape, np.int64))
    lo = np.maximum(hi - 1, 0)
    pick = np.where(np.abs(sorted_cb[lo] - q) <= np.abs(sorted_cb[hi] - q), lo, hi)
    rel = np.abs(sorted_cb[pick] - q) / np.maximum(np.abs(q), 1e-30)
    return pick, rel


def _row_scale(row_vals: np.ndarray, codebook: np.ndarray) -> tuple[float, int, np.ndarray]:
    """Scale mapping most of ``row_vals`` onto sorted ``codebook``.

    Returns (scale, values matched, values left unmatched, already divided by the scale).
    """
    # Any value of the row may be one already in the codebook: try up to 8 of them as the
    # anchor (largest first), each against every entry; the first scale that matches most
    # wins. All candidate scales at once: one row of ``q`` per scale.
    anchors = row_vals[np.argsort(-np.abs(row_vals))[:8]]
    scales = (anchors[:, None] / codebook[None, :]).ravel()
    q = row_vals[None, :] / scales[:, None]
    _, rel = _nearest(codebook, q)
    off = rel > 1e-5
    matched = row_vals.size - off.sum(axis=1)
    best = int(np.argmax(matched))
    if matched[best] == 0:
        return 1.0, 0, row_vals
    return scales[best], int(matched[best]), q[best][off[best]]


def _scaled(w2: np.ndarray, bits: int | None) -> CodebookWeight:
    max_entries = (1 << (bits or max(SUPPORTED_BITS))) - 1
    rows = [np.unique(r[r != 0]).astype(np.float64) for r in w2]
    pending = sorted((o for o in range(len(rows)) if rows[o].size),
                     key=lambda o: -rows[o].size)
    if not pending:
        raise NotACodebook("all-zero weight")
    if rows[pending[0]].size > max_entries:
        raise NotACodebook(f"a channel alone has {rows[pending[0]].size} distinct values")
    # Step 1. Grow a shared codebook from the richest channel (scale 1). Every other channel
    # is mapped onto it by the scale that explains most of its values. A channel that
    # leaves values unexplained adds them only on strong evidence for its scale (at least
    # `need` values matched); weaker ones wait for the codebook to grow, and the evidence
    # asked for falls only when no channel can be placed. (Depthwise channels hold 9 of the
    # 2**bits values each, so no single one shows the whole codebook.)
    codebook = np.sort(rows[pending.pop(0)])
    scales = np.ones(len(rows))
    need = 3
    while pending:
        placed = []
        for o in pending:
            s, matched, missing = _row_scale(rows[o], codebook)
            if missing.size and matched < min(need, rows[o].size):
                continue
            scales[o] = s
            placed.append(o)
            if missing.size:
                codebook = np.sort(np.concatenate([codebook, missing]))
                if codebook.size > max_entries:
                    raise NotACodebook(f"channels are not scaled copies of one codebook "
                                       f"of {max_entries} values")
        pending = [o for o in pending if o not in set(placed)]
        if not placed:
            need -= 1
    # Step 2. Normalise so the largest |entry| is 1 (scales then carry the magnitude), and
    # assign every weight its nearest scaled entry.
    norm = np.abs(codebook).max()
    cb, scales = codebook / norm, scales * norm
    idx, _ = _nearest(cb, w2 / scales[:, None])
    idx = idx + 1
    idx[w2 == 0] = 0
    codebook32 = np.concatenate([[0.0], cb]).astype(np.float32)
    scale32 = scales.astype(np.float32)
    # Step 3. Verify the reconstruction; anything else is not this layer's codebook.
    recon = scale32[:, None] * codebook32[idx]
    err = np.abs(recon - w2)
    if not np.all(err <= REL_TOL * np.abs(w2)):
        worst = float((err / np.maximum(np.abs(w2), 1e-30)).max())
        raise NotACodebook(f"scaled-codebook fit off by {worst:.2e} relative")
    return CodebookWeight.from_indices(idx, codebook32, smallest_bits(cb.size), scale=scale32)


def find_codebook(weight: np.ndarray, bits: int | None = None, scaled: bool = True):
    """Express ``weight`` (shape ``(O, *R)``) as a :class:`CodebookWeight`.

    Parameters
    ----------
    weight : np.ndarray
        The dense float weight, output channels first.
    bits : int, optional
        Widest width accepted (default: any supported width).
    scaled : bool
        Also try the per-output-channel scaled form (BatchNorm folded by an exporter).

    Returns
    -------
    CodebookWeight
        With ``shape == weight.shape``, in the narrowest form that holds the layer: the
        smallest supported width of the plain and the scaled forms (the plain one on a tie,
        it has no scale). A folded BatchNorm multiplies the distinct values by up to the
        channel count, so a 2-bit layer of 64 channels also fits a plain 8-bit codebook.

    Raises
    ------
    NotACodebook
        With the reason, when neither form fits.
    """
    if bits is not None:
        check_bits(bits)
    w = np.asarray(weight, np.float32)
    if not np.all(np.isfinite(w)):
        raise NotACodebook("non-finite weights")
    w2 = w.reshape(w.shape[0], -1)
    try:
        cw = _plain(w2, bits)
    except NotACodebook as plain_err:
        if not scaled or w.shape[0] < 2:
            raise
        try:
            cw = _scaled(w2, bits)
        except NotACodebook as scaled_err:
            raise NotACodebook(f"{plain_err}; per-channel: {scaled_err}") from None
        return CodebookWeight(w.shape, cw.bits, cw.packed, cw.codebook, cw.scale)
    narrower = [b for b in SUPPORTED_BITS if b < cw.bits]
    if scaled and narrower and w.shape[0] >= 2:
        try:  # only a narrower scaled form can win; capping it keeps a miss cheap
            cw = _scaled(w2, narrower[-1])
        except NotACodebook:
            pass
    return CodebookWeight(w.shape, cw.bits, cw.packed, cw.codebook, cw.scale)
