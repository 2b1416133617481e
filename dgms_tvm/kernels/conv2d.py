"""Codebook conv2d: compute, NumPy oracle and hand-written schedule.

``Y[n, o, y, x] = sum_{i, r, s} X[n, g(o)*ICg + i, y*sh + r*dh - pt, x*sw + s*dw - pl]
                                * scale[o] * codebook[idx(o, i, r, s)]``

NCHW data, OIHW weight (the layouts both importers produce), any stride, padding, dilation
and groups (depthwise included). The weight arrives as packed indices plus codebook in the
layout of :mod:`dgms_tvm.format` and is decoded tile by tile inside the kernel. With
``bits=FP32_WEIGHT`` the weight operand is the float32 OIHW weight itself (the FP32 baseline,
same compute and schedule).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm import te

from ..format import row_bytes
from .common import (
    FP32_WEIGHT,
    KERNEL_ATTR,
    OPAQUE,
    SPEC_ATTR,
    Tiler,
    best_tile,
    decode_index,
    i64,
)
from .protocol import KernelFamily, Spec

FAMILY = "cb_conv2d"


@dataclasses.dataclass(frozen=True)
class Conv2dSpec(Spec):
    """Every parameter a codebook conv2d kernel is specialised on."""

    batch: int
    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    bits: int = 4
    scaled: bool = False

    def __post_init__(self):
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"channels {self.in_channels}->{self.out_channels} "
                             f"not divisible by groups={self.groups}")
        if self.out_h < 1 or self.out_w < 1:
            raise ValueError(f"empty conv2d output for {self}")

    @property
    def icg(self) -> int:
        return self.in_channels // self.groups

    @property
    def ocg(self) -> int:
        return self.out_channels // self.groups

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.icg, *self.kernel)

    @property
    def reduction(self) -> int:
        return self.icg * self.kernel[0] * self.kernel[1]

    @property
    def out_h(self) -> int:
        pt, _, pb, _ = self.padding
        eff = (self.kernel[0] - 1) * self.dilation[0] + 1
        return (self.height + pt + pb - eff) // self.stride[0] + 1

    @property
    def out_w(self) -> int:
        _, pl, _, pr = self.padding
        eff = (self.kernel[1] - 1) * self.dilation[1] + 1
        return (self.width + pl + pr - eff) // self.stride[1] + 1

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.out_channels, self.out_h, self.out_w)

    @property
    def name(self) -> str:
        """Kernel name carrying every specialised parameter."""
        s = self
        kind = "fp32_conv2d" if s.bits == FP32_WEIGHT else FAMILY
        return (f"{kind}_n{s.batch}_c{s.in_channels}_h{s.height}_w{s.width}_o{s.out_channels}"
                f"_k{s.kernel[0]}x{s.kernel[1]}_s{s.stride[0]}x{s.stride[1]}"
                f"_p{'x'.join(map(str, s.padding))}_d{s.dilation[0]}x{s.dilation[1]}"
                f"_g{s.groups}" + ("" if s.bits == FP32_WEIGHT else
                                   f"_b{s.bits}{'_scaled' if s.scaled else ''}"))


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


def reference(spec: Conv2dSpec, x, weight) -> np.ndarray:
    """NumPy oracle: direct convolution of ``x`` with the dense ``weight`` (float64 sum)."""
    s = spec
    pt, pl, pb, pr = s.padding
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    out = np.zeros(s.out_shape, np.float64)
    (sh, sw), (dh, dw) = s.stride, s.dilation
    oh, ow = s.out_h, s.out_w
    w = weight.astype(np.float64)
    for g in range(s.groups):
        xs = xp[:, g * s.icg:(g + 1) * s.icg]
        ws = w[g * s.ocg:(g + 1) * s.ocg]
        for r in range(s.kernel[0]):
            for q in range(s.kernel[1]):
                patch = xs[:, :, r * dh: r * dh + sh * (oh - 1) + 1: sh,
                           q * dw: q * dw + sw * (ow - 1) + 1: sw]
                out[:, g * s.ocg:(g + 1) * s.ocg] += np.einsum("nchw,oc->nohw", patch,
                                                               ws[:, :, r, q])
    return out.astype(np.float32)


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
        tile.vectorize(lambda: xi, lambda: sch.get_loops(acc)[-1])
    # Step 4. Split off the accumulator initialisation last (see tvm-notes: parallel after
    # decompose_reduction is rejected).
    tile.finish(conv, ri)


#: The exact conv: any conv2d (groups included), tuned by MetaSchedule from its hand schedule.
KERNEL = KernelFamily(FAMILY, Conv2dSpec, compute, schedule, reference, apply=apply,
                      searchable=True, knobs=True)
