"""The DGMS layer format: packed b-bit indices plus a per-layer float codebook.

This module is the one written-down contract between the PyTorch half (DGMS training, hard
assignment, export) and the compiler half (Relax rewrite, kernels). Both use these functions;
nothing else in the project packs or unpacks indices.

Layout (version 1)
------------------
A quantized layer with weight ``W`` of shape ``(O, *R)`` (``O`` output channels; ``R`` the
reduction axes: ``(I/groups, KH, KW)`` for conv2d, ``(K,)`` for dense) is stored as

``codebook``
    ``float32[2**bits]``. Entry 0 is exactly ``0.0`` (DGMS's pinned zero component); the other
    entries are the mixture means, in any order. Unused entries are allowed.
``indices``
    conceptually ``uint[O, Kr]`` with ``Kr = prod(R)`` in C order (for conv2d: input channel,
    then kernel row, then kernel column), each in ``[0, 2**bits)``.
``packed``
    ``uint8[O, row_bytes]`` with ``row_bytes = ceil(Kr * bits / 8)``. Each row is an
    LSB-first bit stream: index ``k`` of a row occupies bits ``k*bits .. k*bits+bits-1`` of
    the row, where bit ``p`` of the row is bit ``p % 8`` of byte ``p // 8``. Rows start on
    byte boundaries (the tail of the last byte of a row is zero), so every output channel is
    addressable on its own. For 3 bits an index may straddle two bytes: 8 indices fill
    exactly 3 bytes, nothing is wasted.
``scale`` (optional)
    ``float32[O]``: a per-output-channel factor, present when a BatchNorm was folded into the
    weights by an exporter; the effective weight is ``scale[o] * codebook[indices[o, k]]``.

Supported bit widths: 1, 2, 3, 4 and 8.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

SUPPORTED_BITS = (1, 2, 3, 4, 8)
FORMAT_VERSION = 1


class FormatError(ValueError):
    """A codebook layer does not follow the layout contract."""


def check_bits(bits: int) -> int:
    """Return ``bits`` if it is a supported width, else raise :class:`FormatError`."""
    if int(bits) != bits or int(bits) not in SUPPORTED_BITS:
        raise FormatError(f"unsupported bit width {bits!r}; supported: {list(SUPPORTED_BITS)}")
    return int(bits)


def row_bytes(k: int, bits: int) -> int:
    """Bytes one packed row of ``k`` indices takes at ``bits`` bits."""
    return math.ceil(k * check_bits(bits) / 8)


def pack_indices(indices: np.ndarray, bits: int) -> np.ndarray:
    """Pack ``indices`` of shape ``(O, Kr)`` into ``uint8[O, row_bytes(Kr, bits)]``.

    Parameters
    ----------
    indices : np.ndarray
        Integer array of shape ``(O, Kr)`` with values in ``[0, 2**bits)``.
    bits : int
        One of :data:`SUPPORTED_BITS`.

    Returns
    -------
    np.ndarray
        The packed rows, LSB-first, each row starting on a byte boundary.
    """
    bits = check_bits(bits)
    idx = np.asarray(indices)
    if idx.ndim != 2:
        raise FormatError(f"indices must be 2-D (O, Kr), got shape {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= (1 << bits)):
        raise FormatError(f"indices out of range for {bits} bits: [{idx.min()}, {idx.max()}]")
    o, k = idx.shape
    # Expand every index into its bits (LSB first), lay the bits of a row end to end, pad the
    # row to whole bytes, and let numpy pack them little-endian within each byte.
    bitplanes = (idx.astype(np.uint16)[:, :, None] >> np.arange(bits, dtype=np.uint16)) & 1
    stream = bitplanes.reshape(o, k * bits).astype(np.uint8)
    pad = row_bytes(k, bits) * 8 - k * bits
    if pad:
        stream = np.concatenate([stream, np.zeros((o, pad), np.uint8)], axis=1)
    return np.packbits(stream, axis=1, bitorder="little")


def unpack_indices(packed: np.ndarray, bits: int, k: int) -> np.ndarray:
    """Inverse of :func:`pack_indices`: ``uint8[O, row_bytes]`` -> ``int32[O, k]``."""
    bits = check_bits(bits)
    packed = np.asarray(packed, dtype=np.uint8)
    if packed.ndim != 2 or packed.shape[1] != row_bytes(k, bits):
        raise FormatError(
            f"packed rows of shape {packed.shape} do not hold {k} indices of {bits} bits "
            f"(expected {row_bytes(k, bits)} bytes per row)"
        )
    stream = np.unpackbits(packed, axis=1, bitorder="little")[:, : k * bits]
    planes = stream.reshape(packed.shape[0], k, bits).astype(np.int32)
    return (planes << np.arange(bits, dtype=np.int32)).sum(axis=2, dtype=np.int32)


@dataclasses.dataclass(frozen=True)
class CodebookWeight:
    """One quantized weight tensor in the layout described in this module's docstring.

    Attributes
    ----------
    shape : tuple of int
        The dense weight's shape ``(O, *R)``.
    bits : int
        Index width.
    packed : np.ndarray
        ``uint8[O, row_bytes]``.
    codebook : np.ndarray
        ``float32[2**bits]`` with ``codebook[0] == 0``.
    scale : np.ndarray or None
        ``float32[O]`` per-output-channel factor, or ``None``.
    """

    shape: tuple[int, ...]
    bits: int
    packed: np.ndarray
    codebook: np.ndarray
    scale: np.ndarray | None = None

    def __post_init__(self):
        check_bits(self.bits)
        if len(self.shape) < 2:
            raise FormatError(f"weight shape must be (O, *R), got {self.shape}")
        cb = self.codebook
        if cb.dtype != np.float32 or cb.shape != (1 << self.bits,):
            raise FormatError(
                f"codebook must be float32[{1 << self.bits}], got {cb.dtype}{list(cb.shape)}"
            )
        if cb[0] != 0.0:
            raise FormatError(f"codebook entry 0 must be exactly 0, got {cb[0]!r}")
        expect = (self.shape[0], row_bytes(self.reduction, self.bits))
        if self.packed.dtype != np.uint8 or self.packed.shape != expect:
            raise FormatError(
                f"packed must be uint8{list(expect)}, got {self.packed.dtype}"
                f"{list(self.packed.shape)}"
            )
        if self.scale is not None and (
            self.scale.dtype != np.float32 or self.scale.shape != (self.shape[0],)
        ):
            raise FormatError(f"scale must be float32[{self.shape[0]}]")

    @property
    def out_channels(self) -> int:
        return self.shape[0]

    @property
    def reduction(self) -> int:
        """Number of indices per output channel (``prod(shape[1:])``)."""
        return math.prod(self.shape[1:])

    @classmethod
    def from_indices(cls, indices, codebook, bits, shape=None, scale=None) -> CodebookWeight:
        """Build from unpacked ``indices`` (shape ``(O, *R)`` or ``(O, Kr)``)."""
        idx = np.asarray(indices)
        shape = tuple(idx.shape) if shape is None else tuple(shape)
        cb = np.zeros(1 << check_bits(bits), np.float32)
        given = np.asarray(codebook, np.float32).ravel()
        if given.size > cb.size:
            raise FormatError(f"{given.size} codebook entries do not fit {bits} bits")
        cb[: given.size] = given
        sc = None if scale is None else np.asarray(scale, np.float32).reshape(shape[0])
        return cls(shape, bits, pack_indices(idx.reshape(shape[0], -1), bits), cb, sc)

    def indices(self) -> np.ndarray:
        """Unpacked indices, ``int32`` of the weight's shape."""
        return unpack_indices(self.packed, self.bits, self.reduction).reshape(self.shape)

    def dense(self) -> np.ndarray:
        """The effective float32 weight (the NumPy oracle of every kernel's decode)."""
        w = self.codebook[self.indices()]
        if self.scale is not None:
            w = w * self.scale.reshape((-1,) + (1,) * (len(self.shape) - 1))
        return w.astype(np.float32)

    def sparsity(self) -> float:
        """Fraction of weights that map to the zero entry."""
        return float(np.mean(self.indices() == 0))

    @property
    def nbytes(self) -> int:
        """Storage of the packed form: indices, codebook and scale."""
        extra = 0 if self.scale is None else self.scale.nbytes
        return self.packed.nbytes + self.codebook.nbytes + extra
