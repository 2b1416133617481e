"""DGMS-style hard quantisation: one k-means codebook per layer with the zero pinned.

This is the initialisation step of DGMS (see ../shared/DGMS.md) applied as a final hard
assignment, without the differentiable fine-tuning: K = 2**bits clusters over the layer's
flat weights, the centre nearest 0 becomes exactly 0, every weight takes its nearest centre.
The built-in models use it to get deterministic codebook weights without training.
"""

from __future__ import annotations

import numpy as np

from ..format import CodebookWeight, check_bits


def kmeans_1d(flat: np.ndarray, k: int, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic 1-D k-means: (sorted centres, index of each value's nearest centre).

    scikit-learn's Lloyd k-means (one run, no random restarts) fits the centres on an evenly
    strided sample of at most 2**16 values (a 2.4M-weight layer would otherwise take
    seconds), started from evenly spaced quantiles of that sample, so the result does not
    depend on a random state; every value is then assigned to its nearest fitted centre.
    Data with at most ``k`` distinct values gets those values as its centres.
    """
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    flat = np.asarray(flat, np.float64).ravel()
    distinct = np.unique(flat)
    if distinct.size <= k:  # already a codebook: its values, exactly
        return distinct, np.searchsorted(distinct, flat)
    sample = flat[:: max(1, flat.size // 65536)]
    k = min(k, np.unique(sample).size)
    start = np.quantile(sample, (np.arange(k) + 0.5) / k)
    # One thread: on a small sample its OpenMP team costs more than it saves, and 10x more
    # when the cores are busy.
    with threadpool_limits(1):
        fit = KMeans(n_clusters=k, init=start[:, None], n_init=1, max_iter=iters, tol=0.0,
                     algorithm="lloyd").fit(sample[:, None])
    centres = np.unique(fit.cluster_centers_.ravel())
    return centres, _nearest(centres, flat)


def kmeans_codebook(weight: np.ndarray, bits: int, iters: int = 30) -> CodebookWeight:
    """1-D k-means of ``weight`` into ``2**bits`` centres, the one nearest 0 pinned to 0,
    every weight at its nearest centre."""
    bits = check_bits(bits)
    w = np.asarray(weight, np.float64)
    centres, _ = kmeans_1d(w, 1 << bits, iters)
    centres[np.argmin(np.abs(centres))] = 0.0
    assign = _nearest(centres, w.ravel())
    zero = int(np.flatnonzero(centres == 0.0)[0])
    order = [zero] + [i for i in range(centres.size) if i != zero]  # entry 0 is the zero
    remap = np.empty(centres.size, np.int64)
    remap[order] = np.arange(centres.size)
    return CodebookWeight.from_indices(remap[assign].reshape(w.shape[0], -1),
                                       centres[order].astype(np.float32), bits, shape=w.shape)


def _nearest(sorted_centres: np.ndarray, x: np.ndarray) -> np.ndarray:
    mids = (sorted_centres[1:] + sorted_centres[:-1]) / 2
    return np.searchsorted(mids, x)


def hard_quantize(model, bits: int, skip=("first_conv", "linear")) -> dict[str, CodebookWeight]:
    """Replace conv weights of ``model`` in place by their k-means codebook values.

    Parameters
    ----------
    model : torch.nn.Module
    bits : int
    skip : tuple of str
        ``"first_conv"`` keeps the first ``Conv2d`` in FP32 and ``"linear"`` every ``Linear``
        (DGMS's defaults).

    Returns
    -------
    dict
        Weight name (``layer1.0.conv1.weight``) -> its :class:`CodebookWeight`.
    """
    import torch

    out = {}
    first = True
    for name, mod in model.named_modules():
        is_conv = isinstance(mod, torch.nn.Conv2d)
        if not (is_conv or isinstance(mod, torch.nn.Linear)):
            continue
        keep = (is_conv and first and "first_conv" in skip) or (not is_conv and "linear" in skip)
        first = first and not is_conv
        if keep:
            continue
        cw = kmeans_codebook(mod.weight.detach().cpu().numpy(), bits)
        with torch.no_grad():
            mod.weight.copy_(torch.from_numpy(cw.dense()))
        out[f"{name}.weight"] = cw
    return out
