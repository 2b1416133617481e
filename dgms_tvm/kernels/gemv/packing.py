"""The GEMV kernels' operands, packed at compile time from a layer's indices and codebook."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..int8.operands.weights import quantize_codebook
from .spec import GemvSpec


def pack(spec: GemvSpec, indices: np.ndarray) -> np.ndarray:
    """``uint8[packed_shape]``: the indices ``[N, K]`` (values below 16) in the chunked nibble
    layout of the module docstring."""
    idx = np.zeros((spec.n, spec.kp), np.uint8)
    idx[:, :spec.k] = np.asarray(indices, np.uint8).reshape(spec.n, spec.k)
    half = spec.chunk // 2
    c = idx.reshape(spec.n // spec.rows, spec.rows, spec.kp // spec.chunk, 2, half)
    b = c[:, :, :, 0] | (c[:, :, :, 1] << 4)  # [N/rows, rows, chunks, half]
    return np.ascontiguousarray(b.transpose(0, 2, 1, 3)).reshape(spec.packed_shape)

def lut_pack(spec: GemvSpec, indices: np.ndarray) -> np.ndarray:
    """``uint8[packed_shape]`` of the lut kernel: per row and group of ``g`` weights the index
    ``sum_i idx[n, g*q + i] << (bits * i)``, in the nibble layout of ``packed_shape``
    (padding rows and weights have index 0: weight 0)."""
    nt, q, half = spec.packed_shape
    g, b = spec.group, spec.bits
    idx = np.zeros((nt * spec.rows, q * g), np.uint8)
    idx[:spec.n, :spec.k] = np.asarray(indices, np.uint8).reshape(spec.n, spec.k)
    grp = idx.reshape(nt * spec.rows, q, g).astype(np.uint32)
    e = (grp << (b * np.arange(g, dtype=np.uint32))).sum(axis=2).astype(np.uint8)
    e = e.reshape(nt, 2, half, q)  # [tile, low / high nibble, byte, group]
    return np.ascontiguousarray((e[:, 0] | (e[:, 1] << 4)).transpose(0, 2, 1))

def lut_codebooks(spec: GemvSpec, codebook: np.ndarray) -> np.ndarray:
    """``float32[g, entries]``: row ``i`` holds, for every table index ``e``, the codebook
    entry of the group's weight ``i`` (``codebook[(e >> bits*i) & (2^bits - 1)]``), so that a
    table row is ``sum_i X[g*q + i] * rows[i]``."""
    cb = np.zeros(1 << spec.bits, np.float32)
    cb[:len(codebook)] = codebook
    e = np.arange(spec.entries)
    used = e < (1 << (spec.group * spec.bits))
    out = [np.where(used, cb[(e >> (spec.bits * i)) & ((1 << spec.bits) - 1)], 0)
           for i in range(spec.group)]
    return np.asarray(out, np.float32)

def lut_scale(spec: GemvSpec, scale=None) -> np.ndarray:
    """The per-feature scale padded to whole tiles (ones without one)."""
    out = np.ones(spec.packed_shape[0] * spec.rows, np.float32)
    if scale is not None:
        out[:spec.n] = scale
    return out

def codebook16(codebook: np.ndarray) -> np.ndarray:
    """The float32 codebook zero-padded to the 16 entries of one ``vpermps`` table."""
    out = np.zeros(16, np.float32)
    out[:len(codebook)] = codebook
    return out

@dataclasses.dataclass
class Int8Weights:
    """Operands of an int8 GEMV made at compile time from indices and codebook."""

    packed: np.ndarray  # uint8[packed_shape]
    table: np.ndarray  # int8[64]: the int8 codebook, 16 entries repeated per 128-bit lane
    corr: np.ndarray  # int32[N]: 128 * sum_k Wq[n, k]
    d: np.ndarray  # float32[N]: s_cb * scale[n]

def int8_weights(spec: GemvSpec, indices, codebook, scale=None) -> Int8Weights:
    idx = np.asarray(indices).reshape(spec.n, spec.k)
    q, d = quantize_codebook(codebook, scale, spec.n, indices=idx)
    q16 = np.zeros(16, np.int8)
    q16[:len(q)] = q
    corr = 128 * q16[idx].astype(np.int64).sum(axis=1)
    return Int8Weights(pack(spec, idx), np.tile(q16, 2 if spec.form == "avx2" else 4),
                       corr.astype(np.int32), d)

def operands(spec: GemvSpec, indices, codebook, scale=None) -> list[np.ndarray]:
    """The constant operands of a codebook GEMV kernel (all but ``X`` and ``Y``), made at
    compile time from the layer's indices ``[N, K]``, codebook and per-feature scale."""
    if spec.arith == "lut":
        return [lut_pack(spec, indices), lut_codebooks(spec, codebook), lut_scale(spec, scale)]
    if spec.arith == "exact":
        scale = np.ones(spec.n, np.float32) if scale is None else scale
        return [pack(spec, indices), codebook16(codebook), scale]
    q = int8_weights(spec, indices, codebook, scale)
    if spec.form == "avx2":
        return [q.packed, q.table, q.d]
    return [q.packed, q.table, q.corr, q.d]
