"""The lookup-table conv's numbers (:mod:`..lut`): the table indices and the entries its
tables are built from, made at compile time, and its NumPy oracle, which rounds the tables
as the kernel does. ``spec`` is a :class:`..lut.LutSpec`."""

from __future__ import annotations

import numpy as np

from .quantize import quantize_input

#: Bits a table entry's 16-bit sum is shifted right by (rounded) to an int8 entry.
SHIFT = 8


def group(bits: int) -> int:
    """Input channels a table covers (its 16 entries: ``2**(g * bits)``)."""
    return 4 // bits


def limit(bits: int) -> int:
    """The codebook's int8 range: ``g`` products of inputs within +-127 sum within +-32640,
    so that rounding by ``SHIFT`` bits stays within +-127 without saturating."""
    return min(127, (32767 - (1 << (SHIFT - 1))) // (group(bits) * 127))


def entries(spec, qcb: np.ndarray) -> np.ndarray:
    """The table-building operand ``[g, 16]`` int8: row ``t`` holds the codebook entry of
    digit ``t`` of each table index."""
    b, qcb = spec.conv.bits, np.asarray(qcb)
    e = np.arange(16)
    return np.stack([qcb[(e >> (b * t)) & ((1 << b) - 1)] for t in range(spec.g)]).astype(
        np.int8)


def index(spec, idx: np.ndarray) -> np.ndarray:
    """``[O, tables, kh, kw]``: each weight group's table index (channels padded with 0)."""
    s, b = spec.conv, spec.conv.bits
    idx = np.asarray(idx, np.int64)
    full = np.zeros((s.out_channels, spec.quant.c4, *s.kernel), np.int64)
    full[:, :s.in_channels] = idx
    full = full.reshape(s.out_channels, spec.tables, spec.g, *s.kernel)
    return sum(full[:, :, t] << (b * t) for t in range(spec.g))


def pack(spec, idx: np.ndarray) -> np.ndarray:
    """The weight operand from the codebook indices ``idx[O, C, kh, kw]``: lane ``2m + h`` of
    a 16-byte vector is output channel ``m`` of its 8, group ``2k + h``, as an index into the
    32 bytes of tables ``2k``, ``2k + 1`` (``e + 16 h``)."""
    s = spec.conv
    e = index(spec, idx)  # [O, G, kh, kw]
    ob, kh, kw, kk, q, _ = spec.weight_shape
    e = e.reshape(ob, q, 8, kk, 2, kh, kw) + 16 * np.arange(2)[:, None, None]
    # -> [ob, kh, kw, kk, q, m, h]
    out = e.transpose(0, 5, 6, 3, 1, 2, 4).reshape(spec.weight_shape)
    assert out.shape[0] * q * 8 == s.out_channels
    return out.astype(np.uint8)


def reference(spec, x, idx, qcb, d) -> np.ndarray:
    """NumPy oracle: the conv's float outputs before the epilogue, with its table rounding,
    from the float input ``x``, indices ``idx[O, C, kh, kw]``, int8 codebook ``qcb`` and
    ``d`` (the kernel's ``D``: ``2**SHIFT`` included)."""
    s = spec.conv
    xq, sx = quantize_input(x)
    n, c = xq.shape[:2]
    pt, pl, pb, pr = s.padding
    xp = np.zeros((n, spec.quant.c4, s.height + pt + pb, s.width + pl + pr), np.int64)
    xp[:, :c, pt:pt + s.height, pl:pl + s.width] = xq
    cv = entries(spec, qcb).astype(np.int64)  # [g, 16]
    xg = xp.reshape(n, spec.tables, spec.g, *xp.shape[2:])
    t16 = np.einsum("ngtyx,te->ngeyx", xg, cv)
    tab = (t16 + (1 << (SHIFT - 1))) >> SHIFT  # [n, G, 16, Hp, Wp]
    assert np.abs(tab).max(initial=0) <= 127
    e = index(spec, idx)
    (sh, sw), (dh, dw), (kh, kw) = s.stride, s.dilation, s.kernel
    acc = np.zeros((n, s.out_channels, s.out_h, s.out_w), np.int64)
    for k in range(spec.tables):
        for r in range(kh):
            for q in range(kw):
                win = tab[:, k, :, r * dh:r * dh + (s.out_h - 1) * sh + 1:sh,
                          q * dw:q * dw + (s.out_w - 1) * sw + 1:sw]
                acc += win[:, e[:, k, r, q]]
    return acc.astype(np.float32) * (np.float32(sx) * np.asarray(d, np.float32))[
        None, :, None, None]
