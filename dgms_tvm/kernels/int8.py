"""The int8 strategy of a codebook conv2d: compute, NumPy oracle and hand-written schedule.

Weights: the layer's codebook becomes int8 entries ``q = round(codebook / s_cb)`` with
``s_cb = max|codebook| / 127`` (entry 0 stays exactly 0), and the per-channel factor
``D[o] = s_cb * scale[o]`` (``scale`` is the folded BatchNorm, 1 without one) is applied to
the output, so one 2^b-entry table serves every channel. The packed indices are the same
operand the exact kernel reads.

Activations: quantized symmetrically per tensor at run time (``s_x = max|X| / 127``, no
calibration set to get wrong), rounded to nearest-even, into a zero-padded, channel-innermost
``int8[N, Hp, Wp, C4]`` copy (``C4``: channels rounded up to 4).

Arithmetic: int8 x int8 products summed in int32 over ``(r, s, c)``, four channels by four
outputs at a time: one ``sdot`` per 16 products on cores with dotprod (a 4-pixel x
4-channel x 4-input tensor intrinsic, :mod:`.intrin`), the generic vectorised form elsewhere
(aarch64 cores without dotprod have a kernel of their own, :mod:`.int8_long`, on the same
quantized values in 16-channel groups: ``depth`` of :class:`QuantSpec` / :class:`DecodeSpec`);
then ``Y = float(acc) * s_x * D[o]``.

Only ``groups == 1`` layers with output channels in multiples of 4 take this strategy (the
pass keeps the others exact).
"""

from __future__ import annotations

import dataclasses
import json
import types

import numpy as np
import tvm
from tvm import te
from tvm.script import tirx as T

from ..format import row_bytes
from .common import (
    FP32_WEIGHT,
    KERNEL_ATTR,
    OPAQUE,
    SPEC_ATTR,
    best_tile,
    decode_index,
    i64,
    span,
    splat,
)
from .conv2d import Conv2dSpec, _spec_from
from .conv2d import reference as conv_reference

FAMILY = "q8_conv2d"
#: No sampled design space yet: tuning leaves the int8 kernels to their hand schedules.
SEARCHABLE = False
QUANT_FAMILY = "q8_quant"
DECODE_FAMILY = "q8_decode"
#: Function attribute of an int8 conv2d that reads its weight decoded by a q8_decode kernel.
PREDECODED_ATTR = "dgms.predecoded"
#: Function attribute of an int8 conv2d whose input is stored + 128 as uint8 (x86 VNNI).
UNSIGNED_ATTR = "dgms.unsigned"
#: Smallest max|X| used for the activation scale (an all-zero input then quantizes to 0).
TINY = np.float32(1e-30)


def supports(spec: Conv2dSpec) -> str:
    """Empty when the int8 strategy can take ``spec``, else why not."""
    if spec.groups != 1:
        return "grouped / depthwise conv (int8 strategy needs groups == 1)"
    if spec.out_channels % 4:
        return f"{spec.out_channels} output channels (int8 strategy needs a multiple of 4)"
    return ""


@dataclasses.dataclass(frozen=True)
class Epilogue:
    """What the int8 conv does to its outputs after dequantizing them, in this order: add a
    per-channel ``B[o]`` (a folded BatchNorm's shift and the conv's own bias; its scale is
    folded into ``D``), add a same-shape ``R`` (a residual), then ``relu`` or ``relu6``.
    Each is one more operation on a value in registers, instead of a pass of its own over
    the whole output."""

    bias: bool = False
    residual: bool = False
    act: str = ""  # "", "relu" or "relu6"

    def __post_init__(self):
        if self.act not in ("", "relu", "relu6"):
            raise ValueError(f"unknown activation {self.act!r}")

    def __bool__(self) -> bool:
        return self.bias or self.residual or bool(self.act)

    @property
    def suffix(self) -> str:
        return (("_bias" if self.bias else "") + ("_res" if self.residual else "")
                + (f"_{self.act}" if self.act else ""))

    def numpy(self, y: np.ndarray, b=None, r=None) -> np.ndarray:
        """The NumPy oracle of the epilogue on ``y[N, O, H, W]`` (float32 operations)."""
        y = np.asarray(y, np.float32)
        if self.bias:
            y = y + np.asarray(b, np.float32)[None, :, None, None]
        if self.residual:
            y = y + np.asarray(r, np.float32)
        if self.act:
            y = np.maximum(y, np.float32(0))
        if self.act == "relu6":
            y = np.minimum(y, np.float32(6))
        return y


def name(spec: Conv2dSpec, predecoded: bool = False, unsigned: bool = False,
         epilogue: Epilogue = Epilogue()) -> str:
    """``q8_conv2d_<shape>_b<bits>`` for a codebook layer; ``..._w8`` for a float32 weight
    quantized per output channel (:func:`quantize_weight`)."""
    return (FAMILY + spec.name.split("conv2d", 1)[1]
            + ("_w8" if spec.bits == FP32_WEIGHT else "") + ("_pre" if predecoded else "")
            + ("_u8" if unsigned else "") + epilogue.suffix)


def unsigned_input(profile) -> bool:
    """Whether int8 convs for ``profile``'s core store their input + 128 as uint8: on x86
    with VNNI, whose ``vpdpbusd`` (512 bits) multiplies unsigned by signed bytes."""
    return profile is not None and profile.is_x86 and profile.vnni


def correction(indices: np.ndarray, q_codebook: np.ndarray) -> np.ndarray:
    """``int32[O]``: ``128 * sum_k Wq[o, k]``, what an unsigned (+128) input adds to each
    output channel's sums (padding and padded channels hold 128 too, and meet weight 0 or
    their real weight: the window always covers every weight)."""
    return weight_correction(np.asarray(q_codebook)[np.asarray(indices)])


def weight_correction(wq: np.ndarray) -> np.ndarray:
    """:func:`correction` from the int8 weight ``[O, C, kh, kw]`` itself."""
    w = np.asarray(wq, np.int64)
    return (128 * w.reshape(w.shape[0], -1).sum(axis=1)).astype(np.int32)


def quantize_weight(w: np.ndarray, limit: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """A float32 weight ``[O, C, kh, kw]`` (a layer that is no codebook, such as the stem) as
    int8 per output channel, symmetric: ``(q, s)`` with ``w ~ q * s[o]``, ``s[o] =
    max|w[o]| / limit``; ``s`` is the conv's ``D`` operand. ``limit``: the largest
    magnitude (63 for the widening kernel, :mod:`.int8_long`)."""
    w = np.asarray(w, np.float32)
    level = np.maximum(np.abs(w).reshape(w.shape[0], -1).max(axis=1), TINY)
    s = (level / np.float32(limit)).astype(np.float32)
    q = np.clip(np.rint(w / s[:, None, None, None]), -limit, limit)
    return q.astype(np.int8), s


def quantize_codebook(codebook: np.ndarray, scale: np.ndarray | None,
                      out_channels: int, limit: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codebook entries within +-``limit``, float32 per-channel output factor
    ``D``)."""
    cb = np.asarray(codebook, np.float64)
    top = float(np.abs(cb).max())
    s_cb = top / limit if top > 0 else 1.0
    q = np.clip(np.rint(cb / s_cb), -limit, limit).astype(np.int8)
    d = np.full(out_channels, s_cb) * (1.0 if scale is None else np.asarray(scale, np.float64))
    return q, d.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """The activation quantization in front of an int8 conv2d: input shape and padding."""

    batch: int
    channels: int
    height: int
    width: int
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    extra: int = 0  # zero columns beyond the right padding (see padded_out_w)
    phases: int = 1  # columns stored deinterleaved by column % phases (the conv's stride)
    offset: int = 0  # 128: stored as uint8 q + 128 (x86 VNNI multiplies unsigned by signed)
    depth: int = 4  # channels per group, innermost (16: the widening conv, .int8_long)

    @classmethod
    def of(cls, spec: Conv2dSpec, unsigned: bool = False, depth: int = 4) -> QuantSpec:
        """The quantize in front of ``spec``'s int8 conv; ``depth`` 16 (the widening conv:
        one pixel's 16 channels per load, any stride, no column past the row's end) keeps
        the columns in order and adds none."""
        if depth != 4:
            return cls(spec.batch, spec.in_channels, spec.height, spec.width,
                       tuple(spec.padding), 0, 1, 128 if unsigned else 0, depth)
        return cls(spec.batch, spec.in_channels, spec.height, spec.width, tuple(spec.padding),
                   (padded_out_w(spec, unsigned) - spec.out_w) * spec.stride[1],
                   spec.stride[1], 128 if unsigned else 0, depth)

    @property
    def dtype(self) -> str:
        return "uint8" if self.offset else "int8"

    @property
    def c4(self) -> int:
        """Channels rounded up to whole groups (of ``depth``)."""
        return (self.channels + self.depth - 1) // self.depth * self.depth

    @property
    def out_shape(self) -> tuple[int, ...]:
        """``[N, Hp, C4/d, phases, Wp/phases, d]`` (``d``: ``depth``): channel groups, then
        columns (split by ``column % phases``, so that a conv of that column stride reads 4
        neighbouring output pixels' inputs from 16 contiguous bytes), then the ``d``
        channels."""
        pt, pl, pb, pr = self.padding
        wp = self.width + pl + pr + self.extra
        return (self.batch, self.height + pt + pb, self.c4 // self.depth, self.phases,
                (wp + self.phases - 1) // self.phases, self.depth)

    @property
    def name(self) -> str:
        return (f"{QUANT_FAMILY}_n{self.batch}_c{self.channels}_h{self.height}_w{self.width}"
                f"_p{'x'.join(map(str, self.padding))}" + (f"_e{self.extra}" if self.extra
                                                           else "")
                + (f"_s{self.phases}" if self.phases > 1 else "")
                + ("_u8" if self.offset else "") + (f"_d{self.depth}" if self.depth != 4
                                                     else ""))


def padded_out_w(spec: Conv2dSpec, unsigned: bool = False) -> int:
    """Output columns the int8 conv computes: rounded up to 4 (4 pixels' inputs are 16
    contiguous bytes of the quantized input: one load for 4 ``sdot``); the extra columns read
    zeros and are not written out. With the unsigned (x86 VNNI) input, up to 8: the 8-column
    register tile then fits every width (a 128-channel 28x28 3x3 conv here: 0.49 ms in
    4-column tiles, 0.37 ms computing 32 columns in 8-column ones), where on a dotprod core
    the extra columns cost more sdot than the wider tile saves."""
    multiple = 8 if unsigned else 4
    return (spec.out_w + multiple - 1) // multiple * multiple


#: Function attribute of a kernel written already scheduled (TVMScript loops, no blocks).
PRESCHEDULED_ATTR = "dgms.prescheduled"


def quant_compute(spec: QuantSpec, vector: bool = True) -> tvm.tirx.PrimFunc:
    """The PrimFunc ``X -> (Xq, s_x)``: ``Xq`` is X quantized symmetrically per tensor into a
    zero-padded, channel-innermost ``int8[N, Hp, Wp, C4]``; ``s_x = max|X| / 127``.

    A kernel of its own (not a block of the conv) so that the conv reads ``s_x`` as an input
    and can dequantize each register tile where it is computed. Layout: ``out_shape``.

    ``vector``: where the width allows (:func:`quant_vector`), the kernel written already
    scheduled, which converts 4 channels x a run of columns at a time and interleaves them
    with one shuffle; else (or ``vector=False``) blocks for :func:`quant_schedule`.
    """
    fast = quant_vector(spec) if vector else None
    if fast is not None:
        return fast
    s = spec
    pt, pl, _, _ = s.padding
    x = te.placeholder(tuple(map(i64, (s.batch, s.channels, s.height, s.width))), "float32",
                       "X")
    an, ac, ah, aw = (te.reduce_axis((i64(0), i64(e)), f"a{v}")
                      for v, e in zip("nchw", (s.batch, s.channels, s.height, s.width)))
    amax = te.compute((i64(1),), lambda _: te.max(te.abs(x[an, ac, ah, aw]),
                                                  axis=[an, ac, ah, aw]), name="amax")

    def level():  # max|X| with the all-zero guard
        return tvm.tirx.max(amax[0], tvm.tirx.const(float(TINY), "float32"))

    d = s.depth

    def quant(n, h, cb, w, c4):
        c = cb * d + c4
        v = tvm.tirx.round(x[n, c, h, w] * (tvm.tirx.const(127.0, "float32") / level()))
        v = tvm.tirx.max(tvm.tirx.min(v, 127.0), -127.0)
        v = (v + tvm.tirx.const(float(s.offset), "float32")).astype(s.dtype)
        if s.c4 == s.channels:
            return v
        return tvm.tirx.if_then_else(c < s.channels, v, tvm.tirx.const(s.offset, s.dtype))

    def pad(n, h, cb, ph, j, c4):
        w = j * s.phases + ph
        inside = tvm.tirx.all(h >= pt, h < pt + s.height, w >= pl, w < pl + s.width)
        return tvm.tirx.if_then_else(inside, q[n, h - pt, cb, w - pl, c4],
                                     tvm.tirx.const(s.offset, s.dtype))

    q = te.compute(tuple(map(i64, (s.batch, s.height, s.c4 // d, s.width, d))), quant,
                   name="quant")
    xq = te.compute(tuple(map(i64, s.out_shape)), pad, name="pad")
    sx = te.compute((i64(1),), lambda i: level() / tvm.tirx.const(127.0, "float32"), name="scale")
    func = te.create_prim_func([x, xq, sx])
    return func.with_attrs({
        KERNEL_ATTR: QUANT_FAMILY,
        SPEC_ATTR: json.dumps(dataclasses.asdict(s)),
        "op_pattern": OPAQUE,
        "tirx.noalias": True,
    }).without_attr("global_symbol")


def _vector_run(spec: QuantSpec) -> int:
    """Columns per channel converted at a time by :func:`quant_vector` (per phase): the most,
    up to 16 (and 64 bytes a run, 128 where no shorter run fits: a 7-wide row of 16-channel
    groups, 3.3 instructions per value on aarch64 against 9 for the generic kernel), that
    split the width evenly, a power of 2 where one does; 0 where fewer than 2."""
    ph = spec.phases
    fits = [k for k in range(2, 17) if spec.width % (k * ph) == 0 and k * spec.depth <= 64]
    fits = fits or [k for k in range(2, 17)
                    if spec.width % (k * ph) == 0 and k * spec.depth <= 128]
    whole = [k for k in fits if k in (4, 8, 16)]  # whole vectors: no lanes to legalise
    return max(whole or fits, default=0)


def quant_vector(spec: QuantSpec) -> tvm.tirx.PrimFunc | None:
    """:func:`quant_compute` written already scheduled, or None where the width does not
    split into runs of at least 2 columns per phase (:func:`_vector_run`).

    max|X| in 16 (or 4) lanes over the flat input; the output filled with the pad value in
    16-byte stores; then per input row (rows in parallel), channel group and run of ``K``
    columns of one phase: one vector load per channel (stride ``phases``), multiply, round,
    clamp, narrow, and one shuffle that interleaves the group's ``d`` channels into the
    ``[..., K, d]`` bytes the conv reads, stored at once (``st4`` on aarch64 for 4)."""
    s = spec
    k = _vector_run(s)
    n_in = s.batch * s.channels * s.height * s.width
    if not k:
        return None
    n, c, h, w, ph = s.batch, s.channels, s.height, s.width, s.phases
    pt, pl, _, _ = s.padding
    shape = tuple(int(v) for v in s.out_shape)
    _, hp, cbs, phs, wq, _ = shape
    n_out = int(np.prod(shape))
    lanes = max(v for v in (1, 4, 16) if n_in % v == 0)
    lo = 16 if n_out % 16 == 0 else 4
    dt, off, run = s.dtype, float(s.offset), k * ph
    d = s.depth
    order = [(i % d) * k + i // d for i in range(d * k)]  # lane k*d + c <- channel c, lane k
    tiny = float(TINY)

    def chan(xf, lv, nh, cb, w0, p, ci):
        """Channel ``ci`` of block ``cb``: K quantized columns (the pad value past C)."""
        src = ((nh // h * c + T.min(cb * d + ci, c - 1)) * h + nh % h) * w + w0 * run + p
        # |x| <= level, so |x * (127 / level)| rounds to at most 127: no clamp needed
        v = T.round(xf[T.Ramp(src, ph, k)] * T.Broadcast(T.float32(127.0) / lv[0], k))
        q = T.Cast(f"{dt}x{k}", v + T.Broadcast(T.float32(off), k))
        if c % d == 0:
            return q
        return T.if_then_else(cb * d + ci < c, q, T.Broadcast(T.Cast(dt, off), k))

    def group(xf, lv, nh, cb, w0, p):
        """The ``d`` channels of block ``cb`` interleaved: ``[K, d]`` bytes."""
        return T.Shuffle([chan(xf, lv, nh, cb, w0, p, ci) for ci in range(d)], order)

    # (a root block around the loops: Relax analyses single-input kernels by their blocks)
    @T.prim_func(private=True, s_tir=True)
    def func(X: T.Buffer((n, c, h, w), "float32"), Xq: T.Buffer(shape, dt),
             S: T.Buffer((1,), "float32")):
        with T.sblock("root"):
            xf = T.decl_buffer((n_in,), "float32", data=X.data)
            qf = T.decl_buffer((n_out,), dt, data=Xq.data)
            acc = T.alloc_buffer((lanes,), "float32")
            lv = T.alloc_buffer((1,), "float32")
            acc[span(0, lanes)] = splat(T.float32(0), lanes)
            for i in range(n_in // lanes):
                acc[span(0, lanes)] = T.max(acc[span(0, lanes)],
                                            T.fabs(xf[span(i * lanes, lanes)]))
            lv[0] = T.float32(tiny)
            for i in range(lanes):
                lv[0] = T.max(lv[0], acc[i])
            S[0] = lv[0] / T.float32(127.0)
            for i in T.parallel(n_out // lo):
                qf[T.Ramp(i * lo, 1, lo)] = T.Broadcast(T.Cast(dt, off), lo)
            for nh in T.parallel(n * h):
                for cb, w0, p in T.grid(cbs, w // run, ph):
                    qf[T.Ramp(((((nh // h * hp + nh % h + pt) * cbs + cb) * phs + (pl + p) % ph)
                               * wq + (w0 * run + pl + p) // ph) * d, 1, d * k)] = group(
                        xf, lv, nh, cb, w0, p)

    return func.with_attrs({
        KERNEL_ATTR: QUANT_FAMILY,
        SPEC_ATTR: json.dumps(dataclasses.asdict(s)),
        PRESCHEDULED_ATTR: 1,
        "op_pattern": OPAQUE,
        "tirx.noalias": True,
    })


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
    """The weight decode of an int8 conv2d: indices re-packed in the order the conv reads
    them, ``[O/4, kh, kw, C4/d, 4 (o), d (c)]`` (``d``: ``depth``, 4 for ``sdot``, 16 for the
    widening conv), in chunks of ``16 * 8/bits`` indices: byte ``j`` of a chunk holds indices
    ``j, 16 + j, 32 + j, ...`` (lowest bits first), so that one shift-and-mask of 16 bytes
    gives 16 consecutive indices and one table lookup (``tbl``) their 16 int8 weights."""

    out_channels: int
    in_channels: int
    kernel: tuple[int, int]
    bits: int
    depth: int = 4

    @classmethod
    def of(cls, spec: Conv2dSpec, depth: int = 4) -> DecodeSpec:
        return cls(spec.out_channels, spec.in_channels, tuple(spec.kernel), spec.bits, depth)

    @property
    def shape(self) -> tuple[int, ...]:
        kh, kw = self.kernel
        d = self.depth
        return (self.out_channels // 4, kh, kw, (self.in_channels + d - 1) // d, 4, d)

    @property
    def total(self) -> int:
        return int(np.prod(self.shape))

    @property
    def chunk(self) -> int:
        return 16 * (8 // self.bits)

    @property
    def nbytes(self) -> int:
        return self.total * self.bits // 8

    def supported(self) -> bool:
        """Widths whose indices never straddle a byte and fit one 16-entry table."""
        return self.bits in (1, 2, 4) and self.total % self.chunk == 0

    @property
    def name(self) -> str:
        kh, kw = self.kernel
        return (f"{DECODE_FAMILY}_o{self.out_channels}_c{self.in_channels}_k{kh}x{kw}"
                f"_b{self.bits}" + (f"_d{self.depth}" if self.depth != 4 else ""))


def conv_order(spec: DecodeSpec, w: np.ndarray) -> np.ndarray:
    """``w[O, C, kh, kw]`` (indices or int8 weights) in the order the conv reads,
    ``[O/4, kh, kw, C4/d, 4 (o), d (c)]``, padded channels 0 (the zero index / weight)."""
    o, c, d = spec.out_channels, spec.in_channels, spec.depth
    kh, kw = spec.kernel
    c4 = spec.shape[3] * d
    full = np.zeros((o, c4, kh, kw), w.dtype)
    full[:, :c] = w
    return full.reshape(o // 4, 4, c4 // d, d, kh, kw).transpose(0, 4, 5, 2, 1, 3).copy()


def pack_for_decode(spec: DecodeSpec, indices: np.ndarray) -> np.ndarray:
    """The ``uint8[nbytes]`` operand of the decode kernel from ``indices[O, C, kh, kw]``."""
    lay = conv_order(spec, np.asarray(indices, np.uint8)).reshape(-1)
    per = 8 // spec.bits
    lay = lay.reshape(-1, per, 16).astype(np.uint16)  # [chunk, s, j]
    packed = np.zeros(lay.shape[::2], np.uint16)
    for sft in range(per):
        packed |= lay[:, sft, :] << (sft * spec.bits)
    return packed.astype(np.uint8).reshape(-1)


def decode_compute(spec: DecodeSpec, lookup: str = "scalar") -> tvm.tirx.PrimFunc:
    """The PrimFunc ``(packed, q_codebook16, s_x) -> W`` (``W``: int8 in the conv's order).

    ``lookup="tbl"``: 16 weights per NEON ``tbl`` (aarch64 only); ``pshufb``: the same with
    x86's SSSE3 ``pshufb``; ``scalar``: one table load per weight, any target. ``s_x`` is not
    read: it makes the call depend on the input, so that Relax's FoldConstant does not decode
    the weight at compile time (that would ship it as int8, twice the size of 4-bit indices).
    """
    bits, per, chunk = spec.bits, 8 // spec.bits, spec.chunk
    nchunks, mask = spec.total // chunk, (1 << bits) - 1
    shape = tuple(T.int64(v) for v in spec.shape)
    total, nbytes = T.int64(spec.total), T.int64(spec.nbytes)

    if lookup in ("tbl", "pshufb"):
        # One 16-byte table lookup of 16 indices: NEON tbl, or x86 SSSE3 pshufb (the same for
        # indices below 16; both are one instruction).
        intrin = {"tbl": "llvm.aarch64.neon.tbl1", "pshufb": "llvm.x86.ssse3.pshuf.b.128"}[
            lookup]

        @T.prim_func(private=True)
        def func(p: T.handle, q: T.handle, sx: T.handle, w: T.handle):
            T.func_attr({"tirx.noalias": True})
            P = T.match_buffer(p, (nbytes,), "uint8")
            Q = T.match_buffer(q, (T.int64(16),), "int8")
            SX = T.match_buffer(sx, (T.int64(1),), "float32")  # noqa: F841 (see docstring)
            W = T.match_buffer(w, shape, "int8")
            Wf = T.decl_buffer((total,), "int8", data=W.data)
            # (Expressions inline: a name bound here would become a buffer allocated per
            # iteration.)
            for i in T.parallel(T.int64(nchunks)):
                for s in T.unroll(per):
                    Wf[T.ramp(i * chunk + s * 16, 1, 16)] = T.call_llvm_pure_intrin(
                        "int8x16", intrin, Q[T.ramp(T.int64(0), 1, 16)],
                        T.reinterpret("int8x16", T.bitwise_and(
                            T.shift_right(P[T.ramp(i * 16, 1, 16)],
                                          T.Broadcast(T.uint8(s * bits), 16)),
                            T.Broadcast(T.uint8(mask), 16))))
    else:
        @T.prim_func(private=True)
        def func(p: T.handle, q: T.handle, sx: T.handle, w: T.handle):
            T.func_attr({"tirx.noalias": True})
            P = T.match_buffer(p, (nbytes,), "uint8")
            Q = T.match_buffer(q, (T.int64(16),), "int8")
            SX = T.match_buffer(sx, (T.int64(1),), "float32")  # noqa: F841 (see docstring)
            W = T.match_buffer(w, shape, "int8")
            Wf = T.decl_buffer((total,), "int8", data=W.data)
            for i in T.parallel(T.int64(nchunks)):
                for s, j in T.grid(per, 16):
                    Wf[i * chunk + s * 16 + j] = Q[T.Cast("int32", T.bitwise_and(
                        T.shift_right(P[i * 16 + j], T.uint8(s * bits)), T.uint8(mask)))]
    return func.with_attrs({
        KERNEL_ATTR: DECODE_FAMILY,
        SPEC_ATTR: json.dumps(dataclasses.asdict(spec)),
        "op_pattern": OPAQUE,
    })


def decode_schedule(func: tvm.tirx.PrimFunc, knobs: dict) -> tvm.tirx.PrimFunc:
    """The decode is written as loops, not blocks: its schedule picks the lookup."""
    d = json.loads(str(func.attrs[SPEC_ATTR]))
    d["kernel"] = tuple(d["kernel"])
    return decode_compute(DecodeSpec(**d), knobs.get("lookup", "scalar"))


def q16(q_codebook: np.ndarray) -> np.ndarray:
    """The int8 codebook padded to the 16 entries of a table lookup."""
    out = np.zeros(16, np.int8)
    out[:len(q_codebook)] = q_codebook
    return out


def compute(spec: Conv2dSpec, predecoded: bool = False, unsigned: bool = False,
            epilogue: Epilogue = Epilogue()) -> tvm.tirx.PrimFunc:
    """The unscheduled PrimFunc ``(Xq, s_x, packed, q_codebook, D[, CORR][, B][, R]) -> Y``
    (``Xq``, ``s_x`` from :func:`quant_compute`; ``B``, ``R``: see :class:`Epilogue`).

    Blocks: ``decode`` (the weight as int8 ``[O/4, kh, kw, C4/4, 4 (o), 4 (c)]``: the 4x4
    tiles ``sdot`` takes), ``acc`` (int32 sums, NCHW) and ``dequant`` (with the epilogue).

    ``unsigned``: ``Xq`` holds ``q + 128`` as uint8 (what x86 ``vpdpbusd`` multiplies), so
    the sums carry ``128 * sum(W[o])``, which the per-channel ``CORR[o]`` (from
    :func:`correction`) takes off before dequantizing: the same integers as the signed form.
    """
    s = spec
    if supports(s):
        raise ValueError(supports(s))
    if s.bits == FP32_WEIGHT and not predecoded:
        raise ValueError("a float32 weight reaches the int8 conv quantized and tiled "
                         "(predecoded=True: quantize_weight, conv_order)")
    kh, kw = s.kernel
    qs = QuantSpec.of(s, unsigned)
    c4 = qs.c4
    xq = te.placeholder(tuple(map(i64, qs.out_shape)), qs.dtype, "Xq")
    sx = te.placeholder((i64(1),), "float32", "SX")
    d = te.placeholder((i64(s.out_channels),), "float32", "D")
    wshape = tuple(map(i64, (s.out_channels // 4, kh, kw, c4 // 4, 4, 4)))
    if predecoded:
        wq = te.placeholder(wshape, "int8", "W")
        weights = [wq]
    else:
        p = te.placeholder((i64(s.out_channels), i64(row_bytes(s.reduction, s.bits))), "uint8",
                           "P")
        qcb = te.placeholder((i64(1 << s.bits),), "int8", "Q")
        weights = [p, qcb]

        def weight(oo, r, q, cb, o4, cc):
            c = cb * 4 + cc
            k = (c * kh + r) * kw + q
            return tvm.tirx.if_then_else(c < s.in_channels,
                                         qcb[decode_index(p, oo * 4 + o4, k, s.bits)],
                                         tvm.tirx.const(0, "int8"))

        wq = te.compute(wshape, weight, name="decode")
    rr = te.reduce_axis((i64(0), i64(kh)), "rr")
    rq = te.reduce_axis((i64(0), i64(kw)), "rq")
    rb = te.reduce_axis((i64(0), i64(c4 // 4)), "rb")
    rc = te.reduce_axis((i64(0), i64(4)), "rc")
    (sh, sw), (dh, dw) = s.stride, s.dilation
    acc = te.compute(
        tuple(map(i64, (s.batch, s.out_channels, s.out_h, padded_out_w(s, unsigned)))),
        lambda n, o, yy, xx: te.sum(
            xq[n, yy * sh + rr * dh, rb, (xx * sw + rq * dw) % sw, (xx * sw + rq * dw) // sw,
               rc].astype("int32")
            * wq[o // 4, rr, rq, rb, o % 4, rc].astype("int32"),
            axis=[rr, rq, rb, rc]),
        name="acc")
    corr = te.placeholder((i64(s.out_channels),), "int32", "CORR") if unsigned else None
    ep = epilogue
    bias = te.placeholder((i64(s.out_channels),), "float32", "B") if ep.bias else None
    res = te.placeholder(tuple(map(i64, s.out_shape)), "float32", "R") if ep.residual else None

    def dequant(n, o, yy, xx):
        a = acc[n, o, yy, xx] - corr[o] if unsigned else acc[n, o, yy, xx]
        v = a.astype("float32") * (sx[0] * d[o])
        if ep.bias:
            v = v + bias[o]
        if ep.residual:
            v = v + res[n, o, yy, xx]
        if ep.act:
            v = tvm.te.max(v, tvm.tirx.const(0.0, "float32"))
        if ep.act == "relu6":
            v = tvm.te.min(v, tvm.tirx.const(6.0, "float32"))
        return v

    y = te.compute(tuple(map(i64, s.out_shape)), dequant, name="dequant")
    extra = [t for t in (corr, bias, res) if t is not None]
    func = te.create_prim_func([xq, sx, *weights, d, *extra, y])
    return func.with_attrs({
        KERNEL_ATTR: FAMILY,
        SPEC_ATTR: json.dumps(dataclasses.asdict(s)),
        PREDECODED_ATTR: int(predecoded),
        UNSIGNED_ATTR: int(unsigned),
        "op_pattern": OPAQUE,
        "tirx.noalias": True,
    }).without_attr("global_symbol")


def quantize_input(x: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """The kernel's activation quantization in NumPy: (int8 values, scale ``s_x``)."""
    x = np.asarray(x, np.float32)
    level = np.maximum(np.abs(x).max(), TINY).astype(np.float32)
    inv = np.float32(127.0) / level
    v = np.clip(np.rint(x * inv), -127, 127)
    return v.astype(np.int8), np.float32(level / np.float32(127.0))


def reference(spec: Conv2dSpec, x, indices, q_codebook, d) -> np.ndarray:
    """NumPy oracle of the int8 strategy: the same quantization, exact integer sums."""
    return reference_int8(spec, x, np.asarray(q_codebook)[np.asarray(indices)], d)


def reference_int8(spec: Conv2dSpec, x, wq, d) -> np.ndarray:
    """:func:`reference` from the int8 weight ``wq[O, C, kh, kw]`` itself."""
    xq, sx = quantize_input(x)
    # exact sums, rounded to float32 as the kernel does
    acc = conv_reference(spec, xq, np.asarray(wq).astype(np.float64))
    return acc * (sx * np.asarray(d, np.float32))[None, :, None, None]


def quad(spec: Conv2dSpec, knobs: dict, unsigned: bool = False) -> bool:
    """Whether the conv runs a 4-pixel x 4-channel x 4-input micro-kernel (4 pixels' inputs
    per load; any column stride, the quantized input being deinterleaved by it): ``sdot`` on
    cores with dotprod, ``vpdpbusd`` on x86 with VNNI (which needs the unsigned input)."""
    del spec
    return knobs.get("dot") == "sdot" or (knobs.get("dot") == "vnni" and unsigned)


def register_tile(spec: Conv2dSpec, knobs: dict, unsigned: bool = False) -> tuple[int, int]:
    """(columns, 4-channel blocks) of the register tile: the divisors of the computed width
    and channel count (up to ``ow_tile`` / ``oc_blocks``; columns in fours for the 4-pixel
    micro-kernel) with the fewest instructions per ``sdot`` whose accumulators, inputs and one
    weight vector fit in ``registers``.

    Per reduction step a tile loads one weight vector per block and one input vector per
    column (per 4 columns with the micro-kernel); once per tile it dequantizes its outputs
    (about 1.5 instructions per output in 4-column vectors, 3.5 otherwise), which weighs on
    layers with a short reduction (a 1x1 conv over 16 channels has 4 ``sdot`` per output)."""
    steps = (spec.in_channels + 3) // 4 * spec.kernel[0] * spec.kernel[1]  # sdot per output/4
    width, per = padded_out_w(spec, unsigned), (4 if quad(spec, knobs, unsigned) else 1)
    # x86 VNNI: one 512-bit accumulator and one vpdpbusd per 4 pixels x 4 channels, and each
    # 4 pixels' inputs take a load and a permute (measured on a 64-channel 56x56 3x3 conv:
    # 0.33 ms at 8 columns x 4 blocks against 0.39 at 8 x 2 and 0.41 at 8 x 8).
    lanes = 4 if per == 4 and knobs.get("dot") == "vnni" else 1
    best, cost = (per, 1), float("inf")
    for xt in (d for d in range(per, max(knobs["ow_tile"], per) + 1, per) if width % d == 0):
        for ob in (d for d in range(1, knobs["oc_blocks"] + 1)
                   if (spec.out_channels // 4) % d == 0):
            dots = xt * ob // lanes
            if dots + xt // per + 1 > knobs["registers"] - 2:
                continue
            c = ((xt // per) * (2 if lanes > 1 else 1) + ob + dots) / dots \
                + (1.5 if xt % 4 == 0 else 3.5) * 4 / steps
            if c < cost - 1e-9:
                best, cost = (xt, ob), c
    return best


#: Input channel blocks (of 4) from which the sdot conv keeps its accumulators channel-major
#: (each register 4 pixels of one channel: stored as they are, where pixel-major ones are
#: transposed by lane moves). With fewer, LLVM unrolls the whole reduction loop, hoists the
#: channel-major form's per-lane weight broadcasts out of the tile loop and spills them
#: (neoverse-n1, M instructions pixel-major -> channel-major: ResNet-18's 3-channel 7x7 stem
#: 16.4 -> 17.7, MobileNetV2's 3x3 stem 2.36 -> 2.79 and its 32 -> 192 1x1 convs 0.83 -> 0.96;
#: 64 -> 384 1x1 0.73 -> 0.66, and the 64-channel and wider 3x3 convs of ResNet-18 gain).
CHANNEL_MAJOR_BLOCKS = 16


def channel_major(spec: Conv2dSpec) -> bool:
    return (spec.in_channels + 3) // 4 >= CHANNEL_MAJOR_BLOCKS


def schedule(func: tvm.tirx.PrimFunc, knobs: dict) -> tvm.tirx.PrimFunc:
    """Hand-written CPU schedule; ``knobs`` come from ``schedules/<target>.json``.

    Knobs: ``oc_blocks`` / ``ow_tile`` (the largest register tile in 4-channel blocks / output
    columns, see :func:`register_tile`), ``registers`` (vector registers), ``dot`` (``sdot``:
    the dotprod instruction; ``none``: generic vector code).
    """
    sch = tvm.s_tir.Schedule(func)
    apply(sch, knobs)
    return sch.mod["main"]


def apply(sch, knobs: dict, sample: bool = False) -> None:
    """The schedule's steps on ``sch`` (no sampled form yet: tuning leaves int8 kernels to
    this hand schedule)."""
    spec = Conv2dSpec(**_spec_from(sch.mod["main"]))
    func = sch.mod["main"]
    predecoded = bool(int(func.attrs[PREDECODED_ATTR]))
    unsigned = UNSIGNED_ATTR in func.attrs and bool(int(func.attrs[UNSIGNED_ATTR]))
    acc, deq = sch.get_sblock("acc"), sch.get_sblock("dequant")
    # Step 1. Register tile: xt columns x 4*ob channels, summed 4 input channels at a time;
    # with sdot the innermost 4 pixels x 4 channels x 4 inputs are one micro-kernel call
    # (4 indexed sdot, .intrin).
    n, o, yy, xx, rr, rq, rb, rc = sch.get_loops(acc)
    xt, ob = register_tile(spec, knobs, unsigned)
    oo, oi, o4 = sch.split(o, [None, ob, 4])
    four = quad(spec, knobs, unsigned)
    vnni = four and knobs["dot"] == "vnni"
    if four:
        xo, xi, x4 = sch.split(xx, [None, xt // 4, 4])
        # Two reduction steps per loop trip (the loop's own 3 to 4 instructions count
        # against 16 to 24 sdot otherwise).
        rbo, rbi = sch.split(rb, [None, 2 if (spec.in_channels + 3) // 4 % 2 == 0 else 1])
        # The window's rows and columns unrolled inside the channel loop: the accumulators
        # then stay in registers for the whole reduction (LLVM keeps a tile in registers
        # across one loop, and would load and store it around each window position).
        sch.reorder(n, oo, yy, xo, rbo, rr, rq, rbi, oi, xi, x4, o4, rc)
        sch.unroll(rr)
        sch.unroll(rq)
        sch.unroll(rbi)
    else:  # generic: the 4 channels are the vector lanes, summed over the 4 inputs
        xo, xi = sch.split(xx, [None, xt])
        sch.reorder(n, oo, yy, xo, rr, rq, rb, oi, xi, rc, o4)
    # Step 2. Accumulate in a local tile laid out channel-innermost (what sdot writes), and
    # dequantize it straight from there.
    local = sch.cache_write(acc, 0, "local")
    sch.compute_inline(local)
    if vnni:  # each 4-pixel x 4-channel sub-tile contiguous: one 512-bit accumulator
        sch.transform_layout(acc, ("write", 0), lambda n_, o_, y_, x_: (
            n_, y_, x_ // 4, o_ // 4, x_ % 4, o_ % 4))
    elif four and channel_major(spec):  # 4 pixels of one channel per register (NCHW's order)
        sch.transform_layout(acc, ("write", 0), lambda n_, o_, y_, x_: (n_, y_, o_, x_))
    else:
        sch.transform_layout(acc, ("write", 0), lambda n_, o_, y_, x_: (n_, y_, x_, o_))
    sch.reverse_compute_at(deq, xo)
    # Step 3. Decode the int8 weight tile once per output-channel tile (one lookup per weight
    # per call).
    if not predecoded:
        sch.compute_at(sch.get_sblock("decode"), oo)
    sch.parallel(sch.fuse(n, oo))
    sch.unroll(oi)
    sch.unroll(xi)
    if four:
        from .intrin import sdot_4x4x4, vnni_4x4x4

        init = sch.decompose_reduction(acc, rbo)
        sch.vectorize(sch.get_loops(init)[-1])
        sch.tensorize(x4, vnni_4x4x4() if vnni else sdot_4x4x4(channel_major(spec)))
        if not vnni:
            # Step 4. The tile's initialisation and dequantize fully unrolled: every access to
            # the accumulator tile then has a constant index, so LLVM keeps the tile in
            # registers from the zeroing through the sums to the dequantize (which stores a
            # channel-major register as it is, and transposes pixel-major ones by lane
            # moves), with no stores to a stack tile and no single-lane loads back from it.
            # TVM would allocate a "local" buffer inside the parallel loop from the
            # workspace pool (a pointer LLVM cannot see through); a small "global" one is a
            # stack array, which LLVM promotes to registers.
            for loop in sch.get_loops(init)[-4:-1]:
                sch.unroll(loop)
            do, dx = sch.get_loops(deq)[-2:]
            do_o, do_i = sch.split(do, [None, 4])
            dx_o, dx_i = sch.split(dx, [None, 4])
            sch.reorder(do_o, dx_o, do_i, dx_i)
            for loop in (do_o, dx_o, do_i):
                sch.unroll(loop)
            sch.vectorize(dx_i)
            sch.set_scope(init, 0, "global")
    else:
        sch.unroll(rc)
        sch.vectorize(o4)
        sch.decompose_reduction(acc, rr)
    del sample


def quant_schedule(func: tvm.tirx.PrimFunc, knobs: dict) -> tvm.tirx.PrimFunc:
    if func.attrs and PRESCHEDULED_ATTR in func.attrs:
        return func
    sch = tvm.s_tir.Schedule(func)
    quant_apply(sch, knobs)
    return sch.mod["main"]


def quant_apply(sch, knobs: dict, sample: bool = False) -> None:
    """max|X| in vector lanes (rfactor), quantize along rows (contiguous reads), then pad in
    channel vectors."""
    spec = QuantSpec(**{k: tuple(v) if k == "padding" else v
                        for k, v in json.loads(str(sch.mod["main"].attrs[SPEC_ATTR])).items()})
    amax = sch.get_sblock("amax")
    _, _, _, ah, aw = sch.get_loops(amax)
    hw = spec.height * spec.width
    lanes = max(v for v in (1, 2, 4, 8, 16) if hw % v == 0)  # along contiguous rows
    if lanes >= 4:
        _, inner = sch.split(sch.fuse(ah, aw), [None, lanes])
        rf = sch.rfactor(inner, 0)
        sch.vectorize(sch.get_loops(rf)[-1])
    qb = sch.get_sblock("quant")
    n, h, cb, w, c4 = sch.get_loops(qb)
    sch.reorder(n, h, cb, c4, w)
    sch.parallel(sch.fuse(n, h))
    _, wi = sch.split(w, [None, best_tile(spec.width, 8)])
    sch.vectorize(wi)
    pb = sch.get_sblock("pad")
    n, h, _, _, j, c4 = sch.get_loops(pb)
    sch.parallel(sch.fuse(n, h))
    sch.vectorize(sch.fuse(j, c4) if spec.out_shape[4] * spec.depth <= 64 else c4)
    del knobs, sample


#: The quantize and decode kernels' entries in the family table (``kernels.FAMILIES``).
QUANT = types.SimpleNamespace(FAMILY=QUANT_FAMILY, schedule=quant_schedule, apply=quant_apply,
                              SEARCHABLE=False, KNOBS=False)
DECODE = types.SimpleNamespace(FAMILY=DECODE_FAMILY, schedule=decode_schedule, apply=None,
                               KNOBS=False)
