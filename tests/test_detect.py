import numpy as np
import pytest

from dgms_tvm.detect import NotACodebook, find_codebook
from dgms_tvm.quant import kmeans_codebook
from tests.helpers import random_codebook_weight


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_plain_codebook_found_exactly(bits, rng):
    cw = random_codebook_weight(rng, (8, 4, 3, 3), bits)
    w = cw.dense()
    got = find_codebook(w)
    assert got.scale is None and got.bits <= bits
    assert got.codebook[0] == 0
    np.testing.assert_array_equal(got.dense(), w)
    assert got.sparsity() == pytest.approx(np.mean(w == 0))


def test_bits_limit_is_enforced(rng):
    w = random_codebook_weight(rng, (8, 64), 4, sparsity=0).dense()
    assert find_codebook(w, bits=4).bits == 4
    with pytest.raises(NotACodebook, match="more than 3 for 2 bits"):
        find_codebook(w, bits=2, scaled=False)


def test_fp32_weight_is_not_a_codebook(rng):
    with pytest.raises(NotACodebook, match="distinct"):
        find_codebook(rng.normal(size=(16, 8, 3, 3)).astype(np.float32), bits=4)


@pytest.mark.parametrize("shape", [(32, 16, 3, 3), (64, 1, 3, 3), (10, 512)])
def test_batchnorm_folded_codebook_is_recovered(shape, rng):
    # What the legacy ONNX exporter does: w'[o] = w[o] * gamma[o] / sqrt(var[o] + eps),
    # rounded in float32. (64, 1, 3, 3) is depthwise: 9 weights per channel, so no channel
    # shows the whole codebook.
    w = kmeans_codebook(rng.normal(size=shape), 4).dense()
    fold = (rng.random(shape[0]) + 0.3) * rng.choice([-1.0, 1.0], shape[0])
    folded = (w * fold.reshape((-1,) + (1,) * (len(shape) - 1)).astype(np.float32))
    folded = folded.astype(np.float32)
    got = find_codebook(folded, bits=4)
    assert got.scale is not None and got.bits == 4
    assert np.abs(got.dense() - folded).max() <= 2e-6 * np.abs(folded).max()
    np.testing.assert_array_equal(got.indices() == 0, folded == 0)


def test_scaled_detection_can_be_disabled(rng):
    w = kmeans_codebook(rng.normal(size=(8, 32)), 2).dense()
    folded = (w * np.arange(1, 9, dtype=np.float32)[:, None]).astype(np.float32)
    with pytest.raises(NotACodebook):
        find_codebook(folded, bits=2, scaled=False)
    assert find_codebook(folded, bits=2).scale is not None


def test_channels_with_unrelated_values_are_rejected(rng):
    # Each channel its own 4-value codebook: not scaled copies of one 15-value codebook.
    rows = [rng.choice(rng.normal(size=4), size=40) for _ in range(16)]
    with pytest.raises(NotACodebook, match="not scaled copies"):
        find_codebook(np.array(rows, np.float32), bits=4)


def test_kmeans_codebook_pins_zero(rng):
    w = rng.normal(size=(16, 8, 3, 3))
    cw = kmeans_codebook(w, 3)
    assert cw.codebook[0] == 0 and cw.bits == 3
    assert len(set(cw.codebook.tolist())) == 8
    assert 0 < cw.sparsity() < 0.5
    # Every weight sits at its nearest centre.
    nearest = np.abs(w[..., None] - cw.codebook.astype(np.float64)).argmin(-1)
    np.testing.assert_array_equal(cw.codebook[nearest], cw.dense())
