"""The x86 int8 depthwise conv2d (one filter per channel) with its epilogue: compute (its
NumPy oracle and its epilogue fusion are :mod:`.depthwise`'s: the same arithmetic).

``Y[n, c, y, x] = act(float(sum_{r, s} Xq[n, c, y*sh + r*dh - pt, x*sw + s*dw - pl]
                            * Wq[c, r, s]) * (s_x * D[c]) + B[c])``

``Xq`` / ``s_x``: the input quantized per tensor, stored + 128 as uint8 in rows of one
channel (:class:`~.operands.quantize.QuantSpec` with ``depth`` 1: ``[N, H, C, 1, W, 1]``), as the
x86 int8 conv before it writes it (its 16-pixel accumulators of one channel, 16 bytes at a
time: :mod:`.vnni`) or the run-time quantize makes it. ``Wq``: int8, laid out at
compile time ``[C, kh, T*4]`` (each window row's taps in fours, zero past ``kw``). ``CORR``:
``128 * sum(Wq[c])``, what the + 128 adds to each sum.

Arithmetic (AVX-512 VNNI): 16 outputs of one row per 512-bit accumulator, and per window row
and 4 taps one ``vpdpbusd``, whose 4 bytes per lane are the 4 inputs of that output's taps:
one 64-byte load of the padded input row, one byte shuffle (``vpermb``: lane ``4p + j``
takes column ``p * sw + j * dw``, any column stride and dilation), the taps' 4 weights
broadcast. A 3x3 window is 3 loads, 3 shuffles and 3 ``vpdpbusd`` per 16 outputs, stride 1
or 2. Then the epilogue and the store: float32 NCHW, or int8 for the next int8 conv
(:class:`~.operands.writer.Writer`'s rounding: a channel group's vectors computed together and
interleaved in registers, ``16 * d`` bytes a store).

Written already scheduled (TVMScript loops): channel groups in parallel chunks, each chunk's
zero-padded scratch rows (pad value 128) filled once, the input rows copied in per channel.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm.script import tirx as T

from ..common import FP32_WEIGHT, as_kernel, best_tile, span, splat
from ..conv import Conv2dSpec
from ..fp32 import depthwise as fp32_depthwise
from ..protocol import KernelFamily, Spec
from . import depthwise
from .operands import writer
from .operands.quantize import QuantSpec
from .operands.weights import weight_correction
from .operands.writer import Writer

FAMILY = "q8r_dw_conv2d"
#: Outputs per accumulator (int32 lanes of a 512-bit register); bytes per input load.
LANES, LOAD = 16, 64
#: The most channels per group of an int8 output (the next conv's groups), computed together.
GROUP = 4
#: Most parallel chunks of channel groups.
CHUNKS = 16
VPDPBUSD = "llvm.x86.avx512.vpdpbusd.512"


@dataclasses.dataclass(frozen=True)
class RowsDwSpec(Spec):
    """An x86 int8 depthwise conv, its epilogue and its int8 output layout (None:
    float32 NCHW)."""

    conv: Conv2dSpec
    act: str = ""  # "", "relu" or "relu6" after the shift
    out: QuantSpec | None = None

    def __post_init__(self):
        why = supports(self.conv)
        if why:
            raise ValueError(why)
        if self.act not in fp32_depthwise.ACTS:
            raise ValueError(f"unknown activation {self.act!r}")
        if self.out is not None and why_not_out(self, self.out):
            raise ValueError(why_not_out(self, self.out))

    @property
    def inp(self) -> QuantSpec:
        """Its input's layout: rows of one channel, + 128, unpadded."""
        c = self.conv
        return QuantSpec(c.batch, c.in_channels, c.height, c.width, offset=128, depth=1)

    @property
    def name(self) -> str:
        return (FAMILY + self.conv.name.split("conv2d", 1)[1]
                + ("_w8" if self.conv.bits == FP32_WEIGHT else "")
                + (f"_{self.act}" if self.act else "")
                + (f"_to_{self.out.name}" if self.out is not None else ""))

    @property
    def tap_groups(self) -> int:
        return (self.conv.kernel[1] + 3) // 4


def supports(spec: Conv2dSpec, profile=None) -> str:
    """Empty when the kernel takes ``spec`` (where it runs is the strategies' to say:
    :data:`dgms_tvm.strategies.INT8_DW`), else why not: a depthwise conv whose 16 outputs'
    taps lie within one 64-byte load."""
    del profile
    why = fp32_depthwise.supports(spec)
    if why:
        return why
    sw, dw = spec.stride[1], spec.dilation[1]
    if (LANES - 1) * sw + 3 * dw >= LOAD:
        return f"column stride {sw} and dilation {dw} reach past one 64-byte load"
    return ""


def why_not_out(spec: RowsDwSpec, out: QuantSpec) -> str:
    """Empty when ``spec``'s outputs can be written as ``out``: the next conv's unsigned
    input in whole channel groups of at most :data:`GROUP`."""
    why = writer.why_not(spec.conv.out_shape, out)
    if why:
        return why
    if out.offset != 128 or GROUP % out.depth:
        return "the next conv reads signed values, or channel groups of more than 4"
    return ""


def weights(spec: RowsDwSpec, wq: np.ndarray) -> np.ndarray:
    """The int8 weight ``[C, 1, kh, kw]`` as the kernel reads it: ``[C, kh, T*4]``."""
    c, (kh, kw) = spec.conv.in_channels, spec.conv.kernel
    w = np.zeros((c, kh, spec.tap_groups * 4), np.int8)
    w[:, :, :kw] = np.asarray(wq, np.int8).reshape(c, kh, kw)
    return w


def lowered(conv: Conv2dSpec, wq: np.ndarray, d: np.ndarray, depth: int):
    """(spec, constant operands after ``Xq, SX``) of the kernel for ``conv`` with the int8
    weight ``wq`` and factor ``d`` (``depth``: the aarch64 kernel's, unused here)."""
    del depth
    spec = RowsDwSpec(conv)
    return spec, [weights(spec, wq), d, weight_correction(wq),
                  np.zeros(conv.out_channels, np.float32)]


def compute(spec: RowsDwSpec) -> tvm.tirx.PrimFunc:
    """The PrimFunc ``(Xq, SX f32[1], W int8[C, kh, T*4], D f32[C], CORR i32[C], B f32[C])
    -> Y`` (float32 NCHW, or int8 in ``spec.out``'s layout), already scheduled."""
    s = spec.conv
    n_, c_, h_, w_ = s.batch, s.in_channels, s.height, s.width
    kh, _ = s.kernel
    (sh, sw), (dh, dw) = s.stride, s.dilation
    pt, pl, pb, _ = s.padding
    oh, ow = s.out_h, s.out_w
    tg = spec.tap_groups
    vecs, rem = divmod(ow, LANES)
    # the scratch rows: every 64-byte load a window makes, the input's columns, then slack
    pitch = ((vecs + (rem > 0)) * LANES * sw + (tg * 4 - 1) * dw + LOAD + 63) // 64 * 64
    pitch = max(pitch, (pl + w_ + 63) // 64 * 64)
    hp = h_ + pt + pb
    rows = (hp + 1) * pitch  # one more row: the last loads' overhang
    d = spec.out.depth if spec.out is not None else 1  # channels computed together
    groups = c_ // d
    chunks = best_tile(n_ * groups, CHUNKS)
    per = n_ * groups // chunks
    act, q = spec.act, spec.out
    n_in = n_ * h_ * c_ * w_
    if q is not None:
        out = Writer(q, relu=bool(act))
        fill = out.fill()
        # the last vector of a row writes the columns past it too (the pad value) where the
        # layout has them: the whole layout is then written, with no fill before
        tail = min(LANES, rem + q.extra) if rem else 0
        prefill = any(q.padding) or vecs * LANES + tail < ow + q.extra
        order = [(i % d) * LANES + i // d for i in range(d * LANES)]

    def shuffle(v, t):
        """Lane ``4p + j``: column ``p * sw + j * dw`` of the 64 bytes loaded for taps
        ``4t ..`` (tap ``4t + j``; any byte past the window's taps, whose weight is 0)."""
        return T.Shuffle([v], [p * sw + j * dw if 4 * t + j < s.kernel[1] else 0
                               for p in range(LANES) for j in range(4)])

    def window(sp, wf, c, k, y, x0):
        """int32 sums of outputs ``(y, x0 .. x0 + 15)`` of channel ``c`` (scratch ``k``)."""
        acc = splat(T.int32(0), LANES)
        for r in range(kh):
            for t in range(tg):
                v = sp[span(k * rows + (y * sh + r * dh) * pitch + x0 * sw + 4 * t * dw,
                            LOAD)]
                wt = T.reinterpret("int32", wf[span((c * kh + r) * tg * 4 + 4 * t, 4)])
                acc = T.call_llvm_pure_intrin(
                    f"int32x{LANES}", VPDPBUSD, acc, shuffle(v, t),
                    T.reinterpret(f"int8x{LOAD}", T.Broadcast(wt, LANES)))
        return acc

    def value(sp, wf, SX, D, CORR, B, c, k, y, x0):
        v = T.Cast(f"float32x{LANES}", window(sp, wf, c, k, y, x0)
                   - splat(CORR[c], LANES)) * splat(SX[0] * D[c], LANES) + splat(B[c], LANES)
        if q is None and act:
            v = T.max(v, splat(T.float32(0), LANES))
        if q is None and act == "relu6":
            v = T.min(v, splat(T.float32(6), LANES))
        return v

    def first(v, k):
        return v if k == LANES else T.Shuffle([v], list(range(k)))

    def quantized(sp, wf, SX, D, CORR, B, c0, y, x0, npx):
        """The group's ``d`` channels' outputs as stored, interleaved: ``16 * d`` bytes
        (past ``npx`` pixels: the pad value)."""
        pad = splat(T.Cast(q.dtype, 128), LANES)
        vs = []
        for k in range(d):
            v = out.value(value(sp, wf, SX, D, CORR, B, c0 + k, k, y, x0), LANES)
            vs.append(v if npx == LANES else T.Shuffle(
                [v, pad], [i if i < npx else LANES + i for i in range(LANES)]))
        return vs[0] if d == 1 else T.Shuffle(vs, order)

    @T.macro
    def rows_of(xf, yf, wf, SX, D, CORR, B, sp, n, c0):
        for k in range(d):  # the input rows into the scratch (its borders stay 128)
            for hh in range(h_):
                sp[span(k * rows + (pt + hh) * pitch + pl, w_)] = xf[
                    span(((n * h_ + hh) * c_ + c0 + k) * w_, w_)]
        if q is None:
            for y, xo in T.grid(oh, vecs):
                yf[span(((n * c_ + c0) * oh + y) * ow + xo * LANES, LANES)] = value(
                    sp, wf, SX, D, CORR, B, c0, 0, y, xo * LANES)
            if rem > 0:
                for y in range(oh):
                    yf[span(((n * c_ + c0) * oh + y) * ow + vecs * LANES, rem)] = first(
                        value(sp, wf, SX, D, CORR, B, c0, 0, y, vecs * LANES), rem)
        else:
            for y, xo in T.grid(oh, vecs):
                yf[span(out.at(n * c_ + c0, y, xo * LANES), LANES * d)] = quantized(
                    sp, wf, SX, D, CORR, B, c0, y, xo * LANES, LANES)
            if rem > 0:
                for y in range(oh):
                    yf[span(out.at(n * c_ + c0, y, vecs * LANES), tail * d)] = first(
                        quantized(sp, wf, SX, D, CORR, B, c0, y, vecs * LANES, rem), tail * d)

    @T.macro
    def chunked(xf, yf, wf, SX, D, CORR, B):
        if q is not None and prefill:
            fill(yf)
        for t in T.parallel(chunks):
            sp = T.alloc_buffer((d * rows,), "uint8")
            for i in range(d * rows // 64):
                sp[span(i * 64, 64)] = splat(T.uint8(128), 64)
            for i in range(per):
                ng = t * per + i
                rows_of(xf, yf, wf, SX, D, CORR, B, sp, ng // groups, ng % groups * d)

    yshape, ydt = ((n_, c_, oh, ow), "float32") if q is None else (q.out_shape, q.dtype)
    ny = int(np.prod(yshape))
    in_shape = spec.inp.out_shape

    @T.prim_func(private=True)
    def func(Xq: T.Buffer(in_shape, "uint8"), SX: T.Buffer((1,), "float32"),
             W: T.Buffer((c_, kh, tg * 4), "int8"), D: T.Buffer((c_,), "float32"),
             CORR: T.Buffer((c_,), "int32"), B: T.Buffer((c_,), "float32"),
             Y: T.Buffer(yshape, ydt)):
        chunked(T.decl_buffer((n_in,), "uint8", data=Xq.data),
                T.decl_buffer((ny,), ydt, data=Y.data),
                T.decl_buffer((c_ * kh * tg * 4,), "int8", data=W.data), SX, D, CORR, B)

    return as_kernel(func, FAMILY, spec.to_json())


def schedule(func: tvm.tirx.PrimFunc, knobs: dict) -> tvm.tirx.PrimFunc:
    """Written already scheduled: no knobs."""
    del knobs
    return func


KERNEL = KernelFamily(FAMILY, RowsDwSpec, compute, schedule, depthwise.reference, supports,
                      fusion=depthwise.act_fusion(RowsDwSpec, compute),
                      int8_out=writer.of_spec(RowsDwSpec, compute, why_not_out,
                                              lambda spec: spec.act))
