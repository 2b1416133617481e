"""Codebook conv2d (the exact strategy and the FP32 baseline): compute and hand-written
schedule (its spec and NumPy oracle: :mod:`..conv`).

``Y[n, o, y, x] = sum_{i, r, s} X[n, g(o)*ICg + i, y*sh + r*dh - pt, x*sw + s*dw - pl]
                                * scale[o] * codebook[idx(o, i, r, s)]``

NCHW data, OIHW weight (the layouts both importers produce), any stride, padding, dilation
and groups (depthwise included). The weight arrives as packed indices plus codebook in the
layout of :mod:`dgms_tvm.format` and is decoded tile by tile inside the kernel. With
``bits=FP32_WEIGHT`` the weight operand is the float32 OIHW weight itself (the FP32 baseline,
same compute and schedule).
"""

from __future__ import annotations

import tvm
from tvm import te

from ...format import row_bytes
from ..common import (
    FP32_WEIGHT,
    KERNEL_ATTR,
    OPAQUE,
    SPEC_ATTR,
    Tiler,
    best_tile,
    decode_index,
    i64,
)
from ..conv import FAMILY, Conv2dSpec, reference
from ..protocol import KernelFamily


def compute(spec: Conv2dSpec) -> tvm.tirx.PrimFunc:
    """The unscheduled PrimFunc ``(X, packed, codebook[, scale]) -> Y`` (``(X, W) -> Y`` for
    ``bits=FP32_WEIGHT``).

    Three blocks: ``pad`` (zero-padded input), ``decode`` (the weight tile, laid out
    ``[i, r, s, o]`` so that output channels are innermost and vectorise), ``conv``.
    """
    s = spec
    kh, kw = s.kernel
    pt, pl, pb, pr = s.padding
    hp, wp = s.height + pt + pb, s.width + pl + pr
    x = te.placeholder(tuple(map(i64, (s.batch, s.in_channels, s.height, s.width))), "float32", "X")
    fp32 = s.bits == FP32_WEIGHT
    if fp32:
        p = te.placeholder(tuple(map(i64, s.weight_shape)), "float32", "W")
    else:
        p = te.placeholder((i64(s.out_channels), i64(row_bytes(s.reduction, s.bits))), "uint8",
                           "P")
        cb = te.placeholder((i64(1 << s.bits),), "float32", "CB")
    sc = te.placeholder((i64(s.out_channels),), "float32", "S") if s.scaled else None

    def pad_value(n, c, h, w):
        inside = tvm.tirx.all(h >= pt, h < pt + s.height, w >= pl, w < pl + s.width)
        return tvm.tirx.if_then_else(inside, x[n, c, h - pt, w - pl], tvm.tirx.const(0.0))

    (sh, sw), (dh, dw) = s.stride, s.dilation
    split = deinterleaved(s)
    if split:  # [n, c, h, column % sw, column // sw]: a strided row read becomes contiguous
        wq = (wp + sw - 1) // sw
        xp = te.compute(tuple(map(i64, (s.batch, s.in_channels, hp, sw, wq))),
                        lambda n, c, h, ph, j: pad_value(n, c, h, j * sw + ph), name="pad")
    else:
        xp = te.compute(tuple(map(i64, (s.batch, s.in_channels, hp, wp))), pad_value,
                        name="pad")

    def read(n, c, h, w):
        return xp[n, c, h, w % sw, w // sw] if split else xp[n, c, h, w]

    def weight(i, r, q, o):
        if fp32:
            return p[o, i, r, q]
        w = cb[decode_index(p, o, (i * kh + r) * kw + q, s.bits)]
        return w * sc[o] if sc is not None else w

    wt = te.compute(tuple(map(i64, (s.icg, kh, kw, s.out_channels))), weight, name="decode")
    ri = te.reduce_axis((i64(0), i64(s.icg)), "ri")
    rr = te.reduce_axis((i64(0), i64(kh)), "rr")
    rq = te.reduce_axis((i64(0), i64(kw)), "rq")
    y = te.compute(
        tuple(map(i64, s.out_shape)),
        lambda n, o, yy, xx: te.sum(
            read(n, o // s.ocg * s.icg + ri, yy * sh + rr * dh, xx * sw + rq * dw)
            * wt[ri, rr, rq, o],
            axis=[ri, rr, rq],
        ),
        name="conv",
    )
    args = [x, p] + ([] if fp32 else [cb]) + ([sc] if sc is not None else []) + [y]
    func = te.create_prim_func(args)
    return func.with_attrs({
        KERNEL_ATTR: FAMILY,
        SPEC_ATTR: s.to_json(),
        "op_pattern": OPAQUE,
        "tirx.noalias": True,
    }).without_attr("global_symbol")  # private: the Relax module names it


def deinterleaved(spec: Conv2dSpec) -> bool:
    """Whether the padded input is stored column-deinterleaved (by ``column % stride``): for
    depthwise convs with strided columns, whose schedule vectorises along output columns and
    would otherwise gather every input one by one."""
    s = spec
    return s.groups > 1 and s.icg == 1 and s.stride[1] > 1 and s.dilation[1] == 1


def schedule(func: tvm.tirx.PrimFunc, knobs: dict) -> tvm.tirx.PrimFunc:
    """Hand-written CPU schedule; ``knobs`` come from ``schedules/<target>.json``.

    Knobs: ``oc_tile`` (output channels per vector tile), ``ow_tile`` (output columns per
    register tile), ``dw_ow_tile`` (columns per vector in the depthwise/grouped variant).
    """
    sch = tvm.s_tir.Schedule(func)
    apply(sch, knobs)
    return sch.mod["main"]


def apply(sch, knobs: dict, sample: bool = False) -> None:
    """The schedule's steps on ``sch`` (``sample``: as a tuning design space, see Tiler)."""
    spec = Conv2dSpec.from_func(sch.mod["main"])
    tile = Tiler(sch, sample)
    conv, dec, pad = sch.get_sblock("conv"), sch.get_sblock("decode"), sch.get_sblock("pad")
    n, o, yy, xx, ri, rr, rq = sch.get_loops(conv)
    # Step 1. Pad once up front, in parallel over channels: the inner loops then read a
    # dense input with no bounds checks.
    pn, pc, *_ = sch.get_loops(pad)
    sch.parallel(sch.fuse(pn, pc))
    if spec.ocg >= knobs["oc_tile"] or spec.groups == 1:
        # Step 2a. Dense conv: vectorise over output channels. A register tile holds
        # ow_tile columns x oc_tile channels; each weight vector is loaded once per tile
        # and each input value is broadcast.
        ot = best_tile(spec.ocg if spec.groups > 1 else spec.out_channels, knobs["oc_tile"])
        xt = best_tile(spec.out_w, knobs["ow_tile"])
        oo, oi = tile.split(o, spec.out_channels, ot)
        xo, xi = tile.split(xx, spec.out_w, xt, 8)
        sch.reorder(n, oo, yy, xo, ri, rr, rq, xi, oi)
        acc = sch.cache_write(conv, 0, "local")
        sch.reverse_compute_at(acc, xo)
        # Step 3a. Decode one [i, r, s, oc_tile] weight tile per output-channel tile: it is
        # reused by every output pixel, so decoding costs one lookup per weight per call.
        sch.compute_at(dec, oo)
        sch.parallel(sch.fuse(n, oo))
        sch.unroll(xi)
        if ot > 1:  # (a 1-channel tile's loops are gone: the innermost is another)
            tile.vectorize(lambda: oi, lambda: sch.get_loops(dec)[-1],
                           lambda: sch.get_loops(acc)[-1])
    else:
        # Step 2b. Depthwise / narrow groups: channels do not share inputs, so vectorise
        # along output columns instead, one channel at a time.
        xt = best_tile(spec.out_w, knobs["dw_ow_tile"])
        xo, xi = tile.split(xx, spec.out_w, xt, 16)
        sch.reorder(n, o, yy, xo, ri, rr, rq, xi)
        acc = sch.cache_write(conv, 0, "local")
        sch.reverse_compute_at(acc, xo)
        sch.compute_at(dec, o)
        sch.parallel(sch.fuse(n, o))
        if xt > 1:  # (a prime width over the tile: 1 column, whose loop is gone)
            tile.vectorize(lambda: xi, lambda: sch.get_loops(acc)[-1])
    # Step 4. Split off the accumulator initialisation last (see tvm-notes: parallel after
    # decompose_reduction is rejected).
    tile.finish(conv, ri)


#: The exact conv: any conv2d (groups included), tuned by MetaSchedule from its hand schedule.
KERNEL = KernelFamily(FAMILY, Conv2dSpec, compute, schedule, reference, apply=apply,
                      searchable=True, knobs=True)
