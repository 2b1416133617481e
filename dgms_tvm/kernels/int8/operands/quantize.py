"""The int8 strategy's activation quantization at run time: the ``q8_quant`` kernel in front of
every int8 conv.

Activations: quantized symmetrically per tensor at run time (``s_x = max|X| / 127``, no
calibration set to get wrong), rounded to nearest-even, into a zero-padded, channel-innermost
``int8[N, Hp, Wp, C4]`` copy (``C4``: channels rounded up to 4; ``depth`` 16 for the widening
conv of :mod:`..widening`); stored + 128 as uint8 for x86 VNNI.

The weights' int8 forms, made at compile time, are :mod:`.weights`'s.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm import te
from tvm.script import tirx as T

from ...common import KERNEL_ATTR, OPAQUE, SPEC_ATTR, best_tile, i64, span, splat
from ...conv import Conv2dSpec
from ...protocol import KernelFamily, Spec
from ..vnni import padded_width, rows

FAMILY = "q8_quant"
#: Smallest max|X| used for the activation scale (an all-zero input then quantizes to 0).
TINY = np.float32(1e-30)


def quantize_input(x: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """The kernel's activation quantization in NumPy: (int8 values, scale ``s_x``)."""
    x = np.asarray(x, np.float32)
    level = np.maximum(np.abs(x).max(), TINY).astype(np.float32)
    inv = np.float32(127.0) / level
    v = np.clip(np.rint(x * inv), -127, 127)
    return v.astype(np.int8), np.float32(level / np.float32(127.0))

@dataclasses.dataclass(frozen=True)
class QuantSpec(Spec):
    """The activation quantization in front of an int8 conv2d: input shape and padding."""

    batch: int
    channels: int
    height: int
    width: int
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    extra: int = 0  # zero columns beyond the right padding (see padded_out_w)
    phases: int = 1  # columns stored deinterleaved by column % phases (the conv's stride)
    offset: int = 0  # 128: stored as uint8 q + 128 (x86 VNNI multiplies unsigned by signed)
    depth: int = 4  # channels per group, innermost (16: the widening conv, int8.widening)

    @classmethod
    def of(cls, spec: Conv2dSpec, unsigned: bool = False, depth: int = 4) -> QuantSpec:
        """The quantize in front of ``spec``'s int8 conv; ``depth`` 16 (the widening conv:
        one pixel's 16 channels per load, any stride, no column past the row's end) keeps
        the columns in order and adds none; 8 (the smmla conv) is laid out as 4 is."""
        if depth not in (4, 8):
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
        return (f"{FAMILY}_n{self.batch}_c{self.channels}_h{self.height}_w{self.width}"
                f"_p{'x'.join(map(str, self.padding))}" + (f"_e{self.extra}" if self.extra
                                                           else "")
                + (f"_s{self.phases}" if self.phases > 1 else "")
                + ("_u8" if self.offset else "") + (f"_d{self.depth}" if self.depth != 4
                                                     else ""))

def padded_out_w(spec: Conv2dSpec, unsigned: bool = False) -> int:
    """Output columns the int8 conv computes: rounded up to 4 (4 pixels' inputs are 16
    contiguous bytes of the quantized input: one load for 4 ``sdot``); the extra columns read
    zeros and are not written out. With the unsigned (x86 VNNI) input, to the lanes of
    its 512-bit registers where it runs its rows form (:func:`..vnni.padded_width`), else
    up to 8: its 4 x 4 form's 8-column register tile then fits every width, which measured
    faster than 4-column ones despite the extra columns (docs/kernels.md), where on a
    dotprod core the extra columns cost more sdot than the wider tile saves."""
    if unsigned and rows(spec):
        return padded_width(spec)
    multiple = 8 if unsigned else 4
    return (spec.out_w + multiple - 1) // multiple * multiple

def quantize_fixed(x: np.ndarray, scale: float) -> np.ndarray:
    """``x`` quantized with a scale known at compile time (int8 between layers: a producer
    whose outputs are bounded writes them so, :mod:`dgms_tvm.passes.int8_chain`), as its
    kernels do: ``round(x * float32(1 / scale))`` to nearest-even, clamped to +-127."""
    inv = np.float32(1.0 / scale)
    return np.clip(np.rint(np.asarray(x, np.float32) * inv), -127, 127).astype(np.int8)

def reference(spec: QuantSpec, x: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """NumPy oracle of the kernel: ``(Xq, s_x)``, ``Xq`` in :attr:`QuantSpec.out_shape`'s
    layout (pad value ``offset`` outside the input and past its channels)."""
    q, sx = quantize_input(x)
    return layout(spec, q), sx

def layout(spec: QuantSpec, q: np.ndarray) -> np.ndarray:
    """The int8 values ``q[N, C, H, W]`` in :attr:`QuantSpec.out_shape`'s layout (stored +
    ``offset``; the pad value ``offset`` outside the input and past its channels)."""
    s = spec
    pt, pl, _, _ = s.padding
    n, hp, groups, phases, wq, d = s.out_shape
    plane = np.full((n, hp, s.c4, phases * wq), s.offset, np.int64)
    plane[:, pt:pt + s.height, :s.channels, pl:pl + s.width] = \
        q.astype(np.int64).transpose(0, 2, 1, 3) + s.offset
    # [n, h, group, channel, column] -> [n, h, group, phase, column // phases, channel]
    out = plane.reshape(n, hp, groups, d, wq, phases).transpose(0, 1, 2, 5, 4, 3)
    return out.astype(s.dtype)


#: Function attribute of a kernel written already scheduled (TVMScript loops, no blocks).
PRESCHEDULED_ATTR = "dgms.prescheduled"

def compute(spec: QuantSpec, vector: bool = True) -> tvm.tirx.PrimFunc:
    """The PrimFunc ``X -> (Xq, s_x)``: ``Xq`` is X quantized symmetrically per tensor into a
    zero-padded, channel-innermost ``int8[N, Hp, Wp, C4]``; ``s_x = max|X| / 127``.

    A kernel of its own (not a block of the conv) so that the conv reads ``s_x`` as an input
    and can dequantize each register tile where it is computed. Layout: ``out_shape``.

    ``vector``: where the width allows (:func:`quant_vector`), the kernel written already
    scheduled, which converts 4 channels x a run of columns at a time and interleaves them
    with one shuffle; else (or ``vector=False``) blocks for :func:`schedule`.
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
        KERNEL_ATTR: FAMILY,
        SPEC_ATTR: s.to_json(),
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
    """:func:`compute` written already scheduled, or None where the width does not
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
        KERNEL_ATTR: FAMILY,
        SPEC_ATTR: s.to_json(),
        PRESCHEDULED_ATTR: 1,
        "op_pattern": OPAQUE,
        "tirx.noalias": True,
    })

def schedule(func: tvm.tirx.PrimFunc, knobs: dict) -> tvm.tirx.PrimFunc:
    if func.attrs and PRESCHEDULED_ATTR in func.attrs:
        return func
    sch = tvm.s_tir.Schedule(func)
    apply(sch, knobs)
    return sch.mod["main"]

def apply(sch, knobs: dict, sample: bool = False) -> None:
    """max|X| in vector lanes (rfactor), quantize along rows (contiguous reads), then pad in
    channel vectors."""
    spec = QuantSpec.from_func(sch.mod["main"])
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


#: Hand-scheduled only (no sampled design space), no knobs.
KERNEL = KernelFamily(FAMILY, QuantSpec, compute, schedule, reference, apply=apply,
                      operand=True, quantize=True)
