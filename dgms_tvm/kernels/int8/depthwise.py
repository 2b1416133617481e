"""The int8 depthwise conv2d (one filter per channel) with its epilogue: compute, NumPy
oracle.

``Y[n, c, y, x] = act(float(sum_{r, s} Xq[n, c, y*sh + r*dh - pt, x*sw + s*dw - pl]
                            * Wq[c, r, s]) * (s_x * D[c]) + B[c])``

``Xq`` / ``s_x``: the input quantized per tensor (:mod:`.operands.quantize`, unpadded, ``d``
channels innermost: ``[N, H, C/d, 1, W, d]``), as the int8 conv before it writes it (int8
between layers, :mod:`dgms_tvm.passes.int8_chain`) or the run-time quantize makes it.
``Wq``: the codebook's int8 entries (:func:`.operands.weights.quantize_codebook`, or a float32
weight per channel), laid out ``[C/d, kh*kw, d]`` at compile time (9 bytes a channel for a
3x3 window, against 4.5 for the packed 4-bit indices: no decode per call). ``D``: the
per-channel factor (codebook scale times BatchNorm scale), ``B`` the shift.

Written already scheduled (TVMScript loops). Per group of ``d`` channels (groups in
parallel): the input plane copied once into a zero-padded scratch plane (columns
deinterleaved by the column stride, so a strided window reads contiguous bytes), then per
output row and 16 bytes of outputs (``16 / d`` pixels x ``d`` channels): per window
position one 16-byte load, int8 x int8 products in int16 two taps at a time (``smull`` /
``smlal``: at most ``2 * 127 * 127 < 2^15``), widened into int32 sums (``saddw``); then the
epilogue and one store: float32 NCHW, or int8 in the next int8 conv's layout (its ``d``
channels innermost like this kernel's, so 16 bytes go out as they are).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm.script import tirx as T

from ..common import FP32_WEIGHT, as_kernel, best_tile, span, splat
from ..conv import Conv2dSpec
from ..conv import reference as conv_reference
from ..fp32 import depthwise as fp32_depthwise
from ..protocol import Fusion, KernelFamily, Spec
from .operands import writer
from .operands.quantize import QuantSpec, layout, quantize_fixed
from .operands.writer import Writer

FAMILY = "q8_dw_conv2d"
#: Bytes per vector: 16 / d pixels of d channels.
LANES = 16
#: Most parallel chunks of channel groups.
CHUNKS = 16


@dataclasses.dataclass(frozen=True)
class Int8DwSpec(Spec):
    """An int8 depthwise conv, its epilogue and its layouts."""

    conv: Conv2dSpec
    act: str = ""  # "", "relu" or "relu6" after the shift
    depth: int = 4  # channels innermost in its input (and an int8 output): 4, 8 or 16
    #: Where set, the outputs are written int8 in this layout (the next int8 conv's input:
    #: ``depth`` channels innermost, columns in order), ``round(y)`` clamped to ``[0, 127]``
    #: after relu / relu6 (``[-127, 127]`` without); the scale is folded into ``D`` and
    #: ``B`` by the pass.
    out: QuantSpec | None = None
    fcvtns: bool = False  # round and convert with one NEON fcvtns (aarch64)

    def __post_init__(self):
        why = fp32_depthwise.supports(self.conv)
        if why:
            raise ValueError(why)
        if self.act not in fp32_depthwise.ACTS:
            raise ValueError(f"unknown activation {self.act!r}")
        if self.depth not in (4, 8, 16):
            raise ValueError(f"channel groups of {self.depth} (4, 8 or 16)")
        if self.out is not None and why_not_out(self, self.out):
            raise ValueError(why_not_out(self, self.out))

    @property
    def inp(self) -> QuantSpec:
        """Its input's layout (the quantize in front of it, or the conv writing it): rows of
        whole 4-column runs in 4- and 8-channel groups (the sdot and smmla convs' stores; the
        columns past the row are not read), in order in 16-channel ones."""
        c = self.conv
        extra = -c.width % 4 if self.depth in (4, 8) else 0
        return QuantSpec(c.batch, c.in_channels, c.height, c.width, extra=extra,
                         depth=self.depth)

    @property
    def groups(self) -> int:
        return (self.conv.in_channels + self.depth - 1) // self.depth

    @property
    def name(self) -> str:
        return (FAMILY + self.conv.name.split("conv2d", 1)[1]
                + ("_w8" if self.conv.bits == FP32_WEIGHT else "")
                + (f"_{self.act}" if self.act else "")
                + (f"_d{self.depth}" if self.depth != 4 else "")
                + (f"_to_{self.out.name}" if self.out is not None else ""))


def why_not_out(spec: Int8DwSpec, out: QuantSpec) -> str:
    """Empty when ``spec``'s outputs can be written as ``out``, else why not."""
    why = writer.why_not(spec.conv.out_shape, out)
    if why:
        return why
    if out.depth != spec.depth or out.offset:
        return "the next conv reads other channel groups, or unsigned values"
    return ""


def supports(spec: Conv2dSpec, profile=None) -> str:
    """Empty when the int8 depthwise conv takes ``spec`` (the cores it pays on are the
    strategies' to say: :data:`dgms_tvm.strategies.INT8_DW`)."""
    del profile
    return fp32_depthwise.supports(spec)


def weights(spec: Int8DwSpec, wq: np.ndarray) -> np.ndarray:
    """The int8 weight ``[C, 1, kh, kw]`` as the kernel reads it: ``[C/d, kh*kw, d]``
    (zeros for the channels past ``C``)."""
    c, taps, d = spec.conv.in_channels, spec.conv.kernel[0] * spec.conv.kernel[1], spec.depth
    w = np.zeros((spec.groups * d, taps), np.int8)
    w[:c] = np.asarray(wq, np.int8).reshape(c, taps)
    return np.ascontiguousarray(w.reshape(spec.groups, d, taps).transpose(0, 2, 1))


def lowered(conv: Conv2dSpec, wq: np.ndarray, d: np.ndarray, depth: int):
    """(spec, constant operands after ``Xq, SX``) of the kernel for ``conv`` with the int8
    weight ``wq`` and factor ``d``, reading the channel groups of ``depth``."""
    spec = Int8DwSpec(conv, depth=depth)
    return spec, [weights(spec, wq), d, np.zeros(conv.out_channels, np.float32)]


def compute(spec: Int8DwSpec) -> tvm.tirx.PrimFunc:
    """The PrimFunc ``(Xq, SX f32[1], W int8[C/d, kh*kw, d], D f32[C], B f32[C]) -> Y``
    (float32 NCHW, or int8 in ``spec.out``'s layout), already scheduled."""
    s, d, lanes = spec.conv, spec.depth, LANES
    n_, c_, h_, w_ = s.batch, s.in_channels, s.height, s.width
    kh, kw = s.kernel
    (sh, sw), (dh, dw) = s.stride, s.dilation
    pt, pl, pb, _ = s.padding
    oh, ow = s.out_h, s.out_w
    g_, taps, ppv = spec.groups, kh * kw, lanes // d
    full, rem = divmod(ow, ppv)
    hp = h_ + pt + pb
    # columns per phase plane: every vector a window reads, every input column copied
    wq = max((full + (rem > 0)) * ppv + (kw - 1) * dw // sw, (pl + w_ - 1) // sw + 1)
    plane = (sw * hp * wq * d + lanes - 1) // lanes * lanes
    in_shape = spec.inp.out_shape
    n_in = int(np.prod(in_shape))
    chunks = best_tile(n_ * g_, CHUNKS)
    per = n_ * g_ // chunks
    act, q = spec.act, spec.out
    if q is not None:
        out = Writer(q, relu=bool(act), fcvtns=spec.fcvtns)
        fill = out.fill()

    def at(p, row, col):
        """Byte of phase ``p``'s plane, padded row ``row``, column ``col``."""
        return ((p * hp + row) * wq + col) * d

    pitch = in_shape[4] * d  # bytes per input row of a group

    def src(ng, hh, w):
        """Byte of input pixel ``(hh, w)`` of group ``ng`` (``n * C/d + g``)."""
        return ((ng // g_ * h_ + hh) * g_ + ng % g_) * pitch + w * d

    @T.macro
    def copy_pixel(xf, sp, ng, hh, w):
        sp[span(at((pl + w) % sw, pt + hh, (pl + w) // sw), d)] = xf[span(src(ng, hh, w), d)]

    def evens(xf, ng, hh, w0, e):
        """Pixels ``w0 + e``, ``w0 + e + 2``, ... (4 of them) of a row: one 32-byte load."""
        return T.Shuffle([xf[span(src(ng, hh, w0), 2 * lanes)]],
                         [8 * i + 4 * e + k for i in range(4) for k in range(4)])

    @T.macro
    def copy_run(xf, sp, ng, hh, w0, e):
        sp[span(at((pl + e) % 2, pt + hh, (pl + w0 + e) // 2), lanes)] = evens(
            xf, ng, hh, w0, e)

    run = 8 if sw == 2 and d == 4 else 0  # pixels per deinterleaving load
    rows_bytes = w_ * d  # a stride-1 row: one contiguous copy
    whole, tail = divmod(rows_bytes, lanes)

    @T.macro
    def copy(xf, sp, ng):
        for i in range(plane // lanes):
            sp[span(i * lanes, lanes)] = splat(T.int8(0), lanes)
        for hh in range(h_):
            if sw == 1:
                for i in range(whole):
                    sp[span(at(0, pt + hh, pl) + i * lanes, lanes)] = xf[
                        span(src(ng, hh, 0) + i * lanes, lanes)]
                if tail > 0:
                    sp[span(at(0, pt + hh, pl) + whole * lanes, tail)] = xf[
                        span(src(ng, hh, 0) + whole * lanes, tail)]
            else:
                if run > 0:  # 8 pixels: the even and the odd ones to their phases
                    for w0 in range(w_ // 8):
                        copy_run(xf, sp, ng, hh, w0 * 8, 0)
                        copy_run(xf, sp, ng, hh, w0 * 8, 1)
                for w in range(w_ // 8 * 8 if run > 0 else 0, w_):
                    copy_pixel(xf, sp, ng, hh, w)

    def window(sp, wl, y, x0):
        """int32 sums of the 16 bytes of outputs at row ``y``, pixel ``x0``: taps in pairs,
        their products summed in int16."""
        prods = []
        for t in range(taps):
            r, c = divmod(t, kw)
            v = sp[span(at((c * dw) % sw, y * sh + r * dh, x0 + (c * dw) // sw), lanes)]
            prods.append(T.Cast(f"int16x{lanes}", v)
                         * T.Cast(f"int16x{lanes}", wl[span(t * lanes, lanes)]))
        acc = None
        for i in range(0, taps, 2):
            pair = prods[i] + prods[i + 1] if i + 1 < taps else prods[i]
            term = T.Cast(f"int32x{lanes}", pair)
            acc = term if acc is None else acc + term
        return acc

    def value(sp, wl, sl, bl, y, x0):
        v = T.Cast(f"float32x{lanes}", window(sp, wl, y, x0)) * sl[span(0, lanes)] \
            + bl[span(0, lanes)]
        if q is None and act:
            v = T.max(v, splat(T.float32(0), lanes))
        if q is None and act == "relu6":
            v = T.min(v, splat(T.float32(6), lanes))
        return v

    def repeated(v):
        """The ``d`` lanes of ``v`` in all 16 (for every pixel of a vector)."""
        return v if d == lanes else T.Shuffle([v] * ppv, list(range(lanes)))

    def quantized(v, npx):
        """The first ``npx`` pixels of ``v`` as stored int8."""
        r = out.value(v, lanes)
        return r if npx == ppv else T.Shuffle([r], list(range(npx * d)))

    def plane_at(ng, k, y, x0):
        return ((ng // g_ * c_ + ng % g_ * d + k) * oh + y) * ow + x0

    def channel(ob, k, npx):
        """Channel ``k``'s ``npx`` pixels of the 16 bytes of outputs staged in ``ob``."""
        return ob[T.Ramp(k, d, npx)] if npx > 1 else ob[k]

    @T.macro
    def store(yf, ob, ng, y, x0, v, npx):
        if q is None:  # lane i * d + k: pixel i, channel g * d + k; to the k-th plane
            ob[span(0, lanes)] = v
            for k in T.unroll(d):
                if ng % g_ * d + k < c_:
                    yf[span(plane_at(ng, k, y, x0), npx)] = channel(ob, k, npx)
        else:
            yf[span(out.at(ng // g_ * c_ + ng % g_ * d, y, x0), npx * d)] = quantized(v, npx)

    @T.macro
    def group(xf, yf, wf, SX, D, B, ng, sp, wl, sl, bl, ob):
        copy(xf, sp, ng)
        for t in T.unroll(taps):  # each tap's d weights in all 16 lanes
            wl[span(t * lanes, lanes)] = repeated(wf[span((ng % g_ * taps + t) * d, d)])
        for i in T.unroll(lanes):
            sl[i] = T.if_then_else(ng % g_ * d + i % d < c_,
                                   SX[0] * D[T.min(ng % g_ * d + i % d, c_ - 1)],
                                   T.float32(0))
            bl[i] = T.if_then_else(ng % g_ * d + i % d < c_,
                                   B[T.min(ng % g_ * d + i % d, c_ - 1)], T.float32(0))
        for y, xo in T.grid(oh, full):
            store(yf, ob, ng, y, xo * ppv, value(sp, wl, sl, bl, y, xo * ppv), ppv)
        if rem > 0:
            for y in range(oh):
                store(yf, ob, ng, y, full * ppv, value(sp, wl, sl, bl, y, full * ppv), rem)

    @T.macro
    def chunked(xf, yf, wf, SX, D, B):
        if q is not None and out.prefill:
            fill(yf)
        for t in T.parallel(chunks):
            sp = T.alloc_buffer((plane,), "int8")
            wl = T.alloc_buffer((taps * lanes,), "int8")
            sl = T.alloc_buffer((lanes,), "float32")
            bl = T.alloc_buffer((lanes,), "float32")
            ob = T.alloc_buffer((lanes,), "float32")
            for i in range(per):
                group(xf, yf, wf, SX, D, B, t * per + i, sp, wl, sl, bl, ob)

    yshape, ydt = ((n_, c_, oh, ow), "float32") if q is None else (q.out_shape, q.dtype)
    ny = int(np.prod(yshape))

    @T.prim_func(private=True)
    def func(Xq: T.Buffer(in_shape, "int8"), SX: T.Buffer((1,), "float32"),
             W: T.Buffer((g_, taps, d), "int8"), D: T.Buffer((c_,), "float32"),
             B: T.Buffer((c_,), "float32"), Y: T.Buffer(yshape, ydt)):
        chunked(T.decl_buffer((n_in,), "int8", data=Xq.data),
                T.decl_buffer((ny,), ydt, data=Y.data),
                T.decl_buffer((g_ * taps * d,), "int8", data=W.data), SX, D, B)

    return as_kernel(func, FAMILY, spec.to_json())


def schedule(func: tvm.tirx.PrimFunc, knobs: dict) -> tvm.tirx.PrimFunc:
    """The kernel rebuilt with the target's rounding instruction (``"round": "fcvtns"``
    on aarch64)."""
    spec = Int8DwSpec.from_func(func)
    return compute(dataclasses.replace(spec, fcvtns=knobs.get("round") == "fcvtns"))


def reference(spec, xq, sx, wq, d, b) -> np.ndarray:
    """NumPy oracle of an int8 depthwise conv (``spec``: this family's or the x86 one's,
    :mod:`.depthwise_rows`: its ``conv``, ``act`` and ``out``) from the int8 input ``xq[N, C,
    H, W]`` (signed values) and weight ``wq[C, 1, kh, kw]``: exact integer sums, then the
    kernels' float32 operations; with ``spec.out``, rounded, clamped and laid out
    (:func:`.operands.quantize.layout`)."""
    acc = conv_reference(spec.conv, np.asarray(xq, np.float64), np.asarray(wq, np.float64))
    scale = (np.float32(sx) * np.asarray(d, np.float32))[None, :, None, None]
    y = acc.astype(np.float32) * scale + np.asarray(b, np.float32)[None, :, None, None]
    if spec.act:
        y = np.maximum(y, np.float32(0))
    if spec.out is not None:
        return layout(spec.out, quantize_fixed(y, 1.0))
    if spec.act == "relu6":
        y = np.minimum(y, np.float32(6))
    return y.astype(np.float32)


def act_fusion(spec_type, compute) -> Fusion:
    """The :class:`~..protocol.Fusion` of an int8 depthwise family (a spec with ``act``): its
    kernel made again with the epilogue's activation, its BatchNorm / bias folded into ``D``
    and ``B``; no residual."""

    def make(func: tvm.tirx.PrimFunc, epilogue) -> tuple[str, tvm.tirx.PrimFunc]:
        spec = dataclasses.replace(spec_type.from_func(func), act=epilogue.act)
        return spec.name, compute(spec)

    return Fusion(make, scale=("D",), shift="B", residual=False)


KERNEL = KernelFamily(FAMILY, Int8DwSpec, compute, schedule, reference, supports,
                      fusion=act_fusion(Int8DwSpec, compute),
                      int8_out=writer.of_spec(Int8DwSpec, compute, why_not_out,
                                              lambda spec: spec.act))
