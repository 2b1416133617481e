import numpy as np
import pytest

from dgms_tvm.format import (
    SUPPORTED_BITS,
    CodebookWeight,
    FormatError,
    pack_indices,
    row_bytes,
    unpack_indices,
)


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
@pytest.mark.parametrize("k", [1, 7, 8, 9, 64, 147])
def test_pack_round_trip(bits, k, rng):
    idx = rng.integers(0, 1 << bits, size=(5, k))
    packed = pack_indices(idx, bits)
    assert packed.dtype == np.uint8
    assert packed.shape == (5, -(-k * bits // 8))
    np.testing.assert_array_equal(unpack_indices(packed, bits, k), idx)


def test_three_bits_really_pack():
    # 8 three-bit indices fill exactly 3 bytes; a nibble layout would take 4.
    assert row_bytes(8, 3) == 3
    assert row_bytes(4608, 3) == 1728


def test_layout_is_lsb_first_bit_stream():
    # Indices 1..8 at 3 bits: bits 100 010 110 001 101 011 111 000 (LSB first per index).
    idx = np.array([[1, 2, 3, 4, 5, 6, 7, 0]])
    packed = pack_indices(idx, 3)
    stream = sum(int(v) << (3 * i) for i, v in enumerate(idx[0]))
    assert packed[0].tolist() == [stream & 255, (stream >> 8) & 255, stream >> 16]
    assert pack_indices(np.array([[1, 2]]), 4)[0].tolist() == [0x21]


def test_rows_start_on_byte_boundaries():
    idx = np.array([[7, 7, 7], [1, 0, 0]])
    packed = pack_indices(idx, 3)
    assert packed.shape == (2, 2)
    assert packed[1].tolist() == [1, 0]
    assert packed[0, 1] == 0b1  # only bit 8 of row 0 is set in its second byte


def test_codebook_weight_dense_and_sparsity(rng):
    idx = rng.integers(0, 16, size=(4, 2, 3, 3))
    cb = np.linspace(-1, 1, 16).astype(np.float32)
    cb[0] = 0
    scale = np.array([1, 2, -1, 0.5], np.float32)
    cw = CodebookWeight.from_indices(idx, cb, 4, scale=scale)
    assert cw.shape == (4, 2, 3, 3) and cw.reduction == 18
    np.testing.assert_array_equal(cw.indices(), idx)
    np.testing.assert_array_equal(cw.dense(), cb[idx] * scale[:, None, None, None])
    assert cw.sparsity() == pytest.approx(np.mean(idx == 0))


@pytest.mark.parametrize("bad", [0, 5, 6, 7, 9, 16, 2.5])
def test_unsupported_bits(bad):
    with pytest.raises(FormatError, match="unsupported bit width"):
        pack_indices(np.zeros((1, 1), int), bad)


def test_contract_violations():
    with pytest.raises(FormatError, match="out of range"):
        pack_indices(np.array([[4]]), 2)
    cb = np.array([0.5, 1, 2, 3], np.float32)
    with pytest.raises(FormatError, match="entry 0 must be exactly 0"):
        CodebookWeight((1, 4), 2, pack_indices(np.zeros((1, 4), int), 2), cb)
    with pytest.raises(FormatError, match="packed must be"):
        CodebookWeight((1, 5), 2, np.zeros((1, 1), np.uint8), np.zeros(4, np.float32))
    with pytest.raises(FormatError, match="do not hold"):
        unpack_indices(np.zeros((1, 3), np.uint8), 4, 8)
