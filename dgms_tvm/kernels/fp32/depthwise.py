"""Depthwise conv2d (one filter per channel) with its epilogue: compute, NumPy oracle.

``Y[n, c, y, x] = act(M[c] * sum_{r, s} X[n, c, y*sh + r*dh - pt, x*sw + s*dw - pl]
                      * w[c, r, s] + B[c])``

with ``w`` either the float32 weight (the FP32 baseline) or the codebook weight decoded from
packed indices (``codebook[idx] * scale[c]``, the exact strategy: FP32 arithmetic on the
exact codebook values). ``M`` and ``B`` are the BatchNorm after the conv (its scale and
shift; 1 and 0 without one) and ``act`` the relu / relu6 after it: each is one operation on
a value in registers instead of a pass of its own over the output. ``M`` is folded into the
9 (kh x kw) weights of the channel, once per call, so the arithmetic per output is the
conv's and one add.

Depthwise convs have few multiply-adds per input (9 for a 3x3 window), so the cost is in
moving data, not in arithmetic. The kernel is written already scheduled (TVMScript loops):

- channels in parallel; each copies its input plane once into a zero-padded scratch plane
  (columns deinterleaved by the column stride, so a strided window reads contiguous
  vectors: the copy's loads are split by one shuffle, ``ld2`` on aarch64);
- per tile of ``rows`` output rows x ``lanes`` output columns: every window position is one
  contiguous vector load and one FMA with the weight broadcast (the rows of a tile share the
  input rows they have in common), then the epilogue and one store.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm.script import tirx as T

from ...format import row_bytes
from ..common import FP32_WEIGHT, as_kernel, best_tile, decode_index, span, splat
from ..conv import Conv2dSpec
from ..conv import reference as conv_reference
from ..int8.operands import writer
from ..int8.operands.quantize import QuantSpec, layout, quantize_fixed
from ..int8.operands.writer import Writer
from ..protocol import Fusion, KernelFamily, Spec

FAMILY = "dw_conv2d"
#: Written scheduled: no blocks for MetaSchedule to transform (not a tuning task).
ACTS = ("", "relu", "relu6")
#: Most parallel chunks of channels (enough for the cores of the boards we target).
CHUNKS = 16


@dataclasses.dataclass(frozen=True)
class DepthwiseSpec(Spec):
    """A depthwise conv (``groups == in_channels == out_channels``), its epilogue and tile."""

    conv: Conv2dSpec
    act: str = ""  # "", "relu" or "relu6" after the BatchNorm / bias
    lanes: int = 4  # output columns per vector (the target's float32 lanes)
    rows: int = 2  # output rows per tile
    #: Where set, the outputs are written as the int8 conv after this one reads its input
    #: (int8 between layers, :mod:`dgms_tvm.passes.int8_chain`): ``round(y)`` clamped to
    #: ``[0, 127]`` after relu / relu6 (``[-127, 127]`` without), in that conv's
    #: quantized-input layout ``out``, instead of float32 NCHW. The quantization scale is
    #: folded into ``W`` / ``M`` and ``B`` by the pass; relu6's bound is then at least 127.
    out: QuantSpec | None = None
    #: Round and convert with one ``fcvtns`` (aarch64), not a round then a conversion.
    fcvtns: bool = False

    def __post_init__(self):
        why = supports(self.conv)
        if why:
            raise ValueError(why)
        if self.act not in ACTS:
            raise ValueError(f"unknown activation {self.act!r}")
        if self.out is not None and _why_not_out(self, self.out):
            raise ValueError(_why_not_out(self, self.out))

    @property
    def fp32(self) -> bool:
        return self.conv.bits == FP32_WEIGHT

    @property
    def name(self) -> str:
        return (FAMILY + self.conv.name.split("conv2d", 1)[1]
                + (f"_{self.act}" if self.act else "")
                + (f"_to_{self.out.name}" if self.out is not None else ""))


def _why_not_out(spec: DepthwiseSpec, out: QuantSpec) -> str:
    return writer.why_not(spec.conv.out_shape, out)


def supports(spec: Conv2dSpec, profile=None) -> str:
    """Empty when ``spec`` is a depthwise conv this kernel takes (on any core), else why
    not."""
    del profile
    if not (spec.groups == spec.in_channels == spec.out_channels) or spec.groups == 1:
        return "not a depthwise conv (groups == channels, one filter per channel)"
    if spec.bits != FP32_WEIGHT and spec.bits > 8:
        return f"{spec.bits}-bit indices"
    return ""


def columns(out_w: int, lanes: int) -> int:
    """Output columns per vector: ``lanes`` where they divide the width; a narrow width
    (up to 4 vectors) in one vector of its own size, which LLVM splits into whole registers
    and a remainder (14 columns in 4 lanes: 4 + 4 + 4 + 2, against 7 vectors of 2); else the
    largest divisor of the width up to ``lanes``."""
    if out_w % lanes == 0:
        return lanes
    if out_w <= 4 * lanes:
        return out_w
    return best_tile(out_w, lanes)


def _vec(buf, base, lanes: int):
    return buf[span(base, lanes)]


def compute(spec: DepthwiseSpec) -> tvm.tirx.PrimFunc:
    """The PrimFunc, already scheduled. Operands: ``(X f32[N, C, H, W], W f32[C, kh*kw],
    B f32[C]) -> Y`` for the FP32 weight (``M`` folded into ``W`` at compile time), or
    ``(X, P u8[C, row_bytes], CB f32[2^bits], M f32[C], B f32[C]) -> Y`` for a codebook
    (``M``: the layer's per-channel scale times the BatchNorm's)."""
    s = spec.conv
    n_, c_, h_, w_ = s.batch, s.in_channels, s.height, s.width
    kh, kw = s.kernel
    (sh, sw), (dh, dw) = s.stride, s.dilation
    pt, pl, pb, pr = s.padding
    oh, ow = s.out_h, s.out_w
    hp, wp = h_ + pt + pb, w_ + pl + pr
    wq = (wp + sw - 1) // sw  # columns per phase
    cols = columns(ow, spec.lanes)
    rt = best_tile(oh, spec.rows)
    taps = kh * kw
    taps4 = (taps + 3) // 4 * 4  # the weights in whole 4-lane vectors
    # Parallel chunks of channels, each with its scratch plane (allocated once per chunk:
    # TVM allocates a buffer inside a parallel loop from the workspace pool, a call).
    chunks = best_tile(n_ * c_, CHUNKS)
    plane = sw * hp * wq
    # Copy: runs of ``run`` input columns per phase (sw * run contiguous inputs split by a
    # shuffle); 1 where the width does not split so (a scalar copy).
    run = max((k for k in (16, 8, 4, 2) if w_ >= k * sw and k <= 2 * spec.lanes), default=1)
    if sw == 1 and w_ <= 4 * spec.lanes:  # a narrow row at once (as columns())
        run = w_
    if sw > 4:
        run = 1
    act = spec.act
    fp32 = spec.fp32
    bits = s.bits
    nbytes = row_bytes(taps, bits) if not fp32 else 1
    ncb = 1 << bits if not fp32 else 1

    q = spec.out  # the quantized output's layout (None: float32 NCHW)
    if q is not None:
        out = Writer(q, relu=bool(act), fcvtns=spec.fcvtns)
        d, qdt = q.depth, q.dtype
        interleave, fill = out.interleave(), out.fill()

    def scratch(p, hh, j):
        return (p * hp + hh) * wq + j

    def weight_cb(P, CB, M, c, k):
        return CB[decode_index(P, c, k, bits)] * M[c]

    def finish(v, B, c, lanes):
        v = v + splat(B[c], lanes)
        if act:
            v = T.max(v, splat(T.float32(0), lanes))
        if act == "relu6":
            v = T.min(v, splat(T.float32(6), lanes))
        return v

    def tap(wl, k, lanes):
        """Weight ``k`` in every lane: for up to 4 lanes, lane ``k % 4`` of the weights'
        ``k // 4``-th vector (``fmla`` by element on aarch64, so the 9 taps of a 3x3 window
        stay in 3 registers)."""
        if lanes == 1:
            return wl[k]
        if lanes > 4:
            return T.Broadcast(wl[k], lanes)
        return T.Shuffle([wl[T.Ramp(k // 4 * 4, 1, 4)]], [k % 4] * lanes)

    def window(sp, wl, y, x0, lanes):
        """The sum over the window of output row ``y``, columns ``x0 ..``: one vector load
        per tap."""
        acc = None
        for r in range(kh):
            for q in range(kw):
                p, dj = (q * dw) % sw, (q * dw) // sw
                term = _vec(sp, scratch(p, y * sh + r * dh, x0 + dj), lanes) * tap(
                    wl, r * kw + q, lanes)
                acc = term if acc is None else acc + term
        return acc

    def src_run(X, nc, hh, w0, p):
        """Inputs ``w0 + p, w0 + p + sw, ...`` (``run`` of them) of row ``hh``: one load of
        ``sw * run`` contiguous values and a shuffle."""
        base = (nc * h_ + hh) * w_ + w0
        if sw == 1:
            return _vec(X, base, run)
        return T.Shuffle([X[T.Ramp(base, 1, sw * run)]], [p + sw * i for i in range(run)])

    whole = w_ // (run * sw) * run * sw if run > 1 else 0  # columns copied in runs

    @T.macro
    def copy_phase(Xf, sp, nc, p):
        """Input columns ``p, p + sw, ...`` (``p`` a Python int: the shuffle's lanes)."""
        for hh, w0 in T.grid(h_, w_ // (run * sw)):
            sp[span(scratch((pl + w0 * run * sw + p) % sw, pt + hh,
                           (pl + w0 * run * sw + p) // sw), run)] = src_run(
                Xf, nc, hh, w0 * run * sw, p)

    @T.macro
    def body(Xf, Y, B, nc, sp, wl, ci):
        c = nc % c_
        # The zero-padded plane: zeros, then the input rows (runs of each phase split off
        # by one shuffle; the columns past the last whole run one by one).
        for i in range(plane // 4):
            sp[T.Ramp(i * 4, 1, 4)] = T.Broadcast(T.float32(0), 4)
        for i in range(plane % 4):
            sp[plane // 4 * 4 + i] = T.float32(0)
        if run > 1:
            copy_phase(Xf, sp, nc, 0)
            if sw > 1:
                copy_phase(Xf, sp, nc, 1)
            if sw > 2:
                copy_phase(Xf, sp, nc, 2)
            if sw > 3:
                copy_phase(Xf, sp, nc, 3)
        for hh, w in T.grid(h_, w_ - whole):
            sp[scratch((pl + whole + w) % sw, pt + hh, (pl + whole + w) // sw)] = Xf[
                (nc * h_ + hh) * w_ + whole + w]
        for yo, xo in T.grid(oh // rt, ow // cols):
            for j in T.unroll(rt):
                if q is None:
                    Y[span(((nc * oh) + yo * rt + j) * ow + xo * cols, cols)] = finish(
                        window(sp, wl, yo * rt + j, xo * cols, cols), B, c, cols)
                else:  # into the staging planes of the channel group (see interleave)
                    Y[span((ci * oh + yo * rt + j) * ow + xo * cols, cols)] = out.value(
                        window(sp, wl, yo * rt + j, xo * cols, cols) + splat(B[c], cols),
                        cols)

    per = n_ * c_ // chunks

    def weight(wbufs, c, k):
        if fp32:
            return wbufs[0][c, k]
        return weight_cb(*wbufs, c, k)

    if q is not None:  # whole channel groups per chunk, each group staged then interleaved
        chunks = best_tile(n_ * c_ // d, CHUNKS)
        per = n_ * c_ // chunks

    @T.macro
    def taps_of(wl, wbufs, nc):
        """Channel ``nc``'s weights into ``wl`` (zeros up to whole 4-lane vectors)."""
        for k in T.unroll(taps4):
            wl[k] = T.if_then_else(k < taps, weight(wbufs, nc % c_, T.min(k, taps - 1)),
                                   T.float32(0))

    @T.macro
    def chunked(Xf, Yf, B, wbufs):
        if q is not None and out.prefill:
            fill(Yf)
        for t in T.parallel(chunks):
            sp = T.alloc_buffer((plane,), "float32")
            wl = T.alloc_buffer((taps4,), "float32")  # (global scope: small, so on the stack)
            if q is None:
                for i in range(per):
                    taps_of(wl, wbufs, t * per + i)
                    body(Xf, Yf, B, t * per + i, sp, wl, 0)
            else:
                st = T.alloc_buffer((d * oh * ow,), qdt)
                for g in range(per // d):
                    for i in range(d):
                        taps_of(wl, wbufs, t * per + g * d + i)
                        body(Xf, st, B, t * per + g * d + i, sp, wl, i)
                    interleave(st, Yf, t * per + g * d)

    # float32 NCHW, or the next conv's quantized input
    yshape, ydt = ((n_, c_, oh, ow), "float32") if q is None else (q.out_shape, qdt)
    ny = n_ * c_ * oh * ow if q is None else out.size
    if fp32:
        @T.prim_func(private=True)
        def func(X: T.Buffer((n_, c_, h_, w_), "float32"), W: T.Buffer((c_, taps), "float32"),
                 B: T.Buffer((c_,), "float32"), Y: T.Buffer(yshape, ydt)):
            chunked(T.decl_buffer((n_ * c_ * h_ * w_,), "float32", data=X.data),
                    T.decl_buffer((ny,), ydt, data=Y.data), B, (W,))
    else:
        @T.prim_func(private=True)
        def func(X: T.Buffer((n_, c_, h_, w_), "float32"), P: T.Buffer((c_, nbytes), "uint8"),
                 CB: T.Buffer((ncb,), "float32"), M: T.Buffer((c_,), "float32"),
                 B: T.Buffer((c_,), "float32"), Y: T.Buffer(yshape, ydt)):
            chunked(T.decl_buffer((n_ * c_ * h_ * w_,), "float32", data=X.data),
                    T.decl_buffer((ny,), ydt, data=Y.data), B, (P, CB, M))
    return as_kernel(func, FAMILY, spec.to_json())


def schedule(func: tvm.tirx.PrimFunc, knobs: dict) -> tvm.tirx.PrimFunc:
    """The kernel rebuilt with the target's ``lanes`` / ``rows`` and its rounding
    instruction (``schedules/<target>.json``; ``"round": "fcvtns"`` on aarch64)."""
    spec = DepthwiseSpec.from_func(func)
    spec = dataclasses.replace(spec, lanes=int(knobs.get("lanes", spec.lanes)),
                               rows=int(knobs.get("rows", spec.rows)),
                               fcvtns=knobs.get("round") == "fcvtns")
    return compute(spec)


def reference(spec: DepthwiseSpec, x, weight, m=None, b=None) -> np.ndarray:
    """NumPy oracle: the conv of ``x`` with the dense ``weight [C, 1, kh, kw]`` times ``m``,
    plus ``b``, then the activation; with ``spec.out``, that rounded and clamped
    (:func:`..int8.operands.quantize.quantize_fixed` at scale 1, the activation's lower
    bound) in its layout (:func:`..int8.operands.quantize.layout`)."""
    if spec.out is not None:
        y = reference(dataclasses.replace(spec, out=None, act=""), x, weight, m, b)
        q = quantize_fixed(np.maximum(y, 0) if spec.act else y, 1.0)
        return layout(spec.out, q)
    c = spec.conv.out_channels
    m = np.ones(c) if m is None else np.asarray(m, np.float64)
    b = np.zeros(c) if b is None else np.asarray(b, np.float64)
    w = np.asarray(weight, np.float64) * m[:, None, None, None]
    y = conv_reference(spec.conv, x, w).astype(np.float64) + b[None, :, None, None]
    if spec.act:
        y = np.maximum(y, 0)
    if spec.act == "relu6":
        y = np.minimum(y, 6)
    return y.astype(np.float32)


#: Written already scheduled (no blocks: no tuning space); its knobs: ``lanes``, ``rows``.
def with_epilogue(func: tvm.tirx.PrimFunc, epilogue) -> tuple[str, tvm.tirx.PrimFunc]:
    """(name, kernel) of the depthwise conv ``func`` made again with ``epilogue``'s
    activation (its BatchNorm / bias fold into ``M`` / ``W`` and ``B``)."""
    spec = dataclasses.replace(DepthwiseSpec.from_func(func), act=epilogue.act)
    return spec.name, compute(spec)


KERNEL = KernelFamily(FAMILY, DepthwiseSpec, compute, schedule, reference, supports,
                      knobs=True, fusion=Fusion(with_epilogue, scale=("M", "W"), shift="B",
                                                residual=False),
                      int8_out=writer.of_spec(DepthwiseSpec, compute, _why_not_out,
                                              lambda spec: spec.act))
