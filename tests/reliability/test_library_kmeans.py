"""Issue 16, section 6: the codebook k-means is scikit-learn's, with the zero pinned.

The zoo's 1- to 4-bit codebooks are what a plain Lloyd k-means gives from the same start (a
NumPy reference here). What changed is that no centre is left without weights, which the
hand-written loop allowed on layers with few weights per centre (MobileNetV2's small
depthwise layers at 8 bits), and that weights already on a codebook keep its exact values.
"""

import numpy as np
import pytest

from dgms_tvm.quant.hard import kmeans_1d, kmeans_codebook


def lloyd_reference(x: np.ndarray, k: int, iters: int = 30):
    """Plain 1-D Lloyd from evenly spaced quantiles, every distance computed."""
    c = np.quantile(x, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        a = np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)
        c = np.array([x[a == j].mean() if np.any(a == j) else c[j] for j in range(k)])
    return np.sort(c)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [300, 5000])
def test_centres_are_lloyds_from_the_same_start(bits, n):
    x = np.random.default_rng(bits * 7 + n).normal(size=n)
    centres, assign = kmeans_1d(x, 1 << bits)
    np.testing.assert_allclose(centres, lloyd_reference(x, 1 << bits), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(assign, np.argmin(np.abs(x[:, None] - centres), axis=1))


def test_no_centre_is_left_without_weights():
    # 288 weights for 256 centres: the quantile start puts several centres in one gap.
    x = np.random.default_rng(0).normal(scale=0.3, size=288)
    centres, assign = kmeans_1d(x, 256)
    assert centres.size == 256
    assert np.bincount(assign, minlength=256).min() >= 1


def test_fewer_distinct_values_give_fewer_centres():
    x = np.repeat([-1.0, 0.0, 0.5], 100)
    centres, assign = kmeans_1d(x, 16)
    np.testing.assert_array_equal(centres, [-1.0, 0.0, 0.5])
    np.testing.assert_array_equal(centres[assign], x)


@pytest.mark.parametrize("bits", [1, 2, 8])
def test_codebook_keeps_the_zero_pinned_as_entry_zero(bits):
    w = np.random.default_rng(bits).normal(size=(16, 8, 3, 3)) + 0.05
    cw = kmeans_codebook(w, bits)
    assert cw.codebook[0] == 0.0 and np.count_nonzero(cw.codebook == 0.0) == 1
    dense = cw.dense()
    near = np.abs(w) <= np.abs(w - dense) + 1e-12  # weights that took the zero are nearest it
    assert np.all(near[dense == 0.0])
