"""The int8 conv2d for cores without a dot-product instruction (Cortex-A53 / A72): widening
multiplies over 16 input channels at a time. Compute (written already scheduled) and oracle.

The arithmetic is the int8 strategy's (:mod:`.sdot`: the same quantized activations, an
int8 codebook, exact integer sums, ``Y = float(acc) * s_x * D[o]`` then the epilogue), but
the codebook's magnitudes stop at 63, not 127. With ``sdot`` one instruction makes 16
multiply-adds; without it the int8 products are made in 16-bit lanes:

- ``smull`` multiplies the low 8 bytes of 16 inputs by the low 8 bytes of 16 weights into 8
  16-bit lanes, ``smlal2`` adds the high 8 bytes' products to the same lanes, then ``smlal``
  and ``smlal2`` the next 16 inputs' products, and ``sadalp`` adds neighbouring lane pairs
  into the 4 32-bit lanes of the accumulator: five instructions per 32 multiply-adds, where
  ``fmla`` needs eight (4 float32 lanes). A 16-bit lane sums 4 products, which fit for
  inputs within +-127 and weights within +-63 (at most 32004 < 32767): this kernel's int8
  codebook has 7-bit magnitudes (``WEIGHT_LIMIT``; the activations keep 8). An odd last
  group of 16 is summed with ``smull`` + ``smlal2`` + ``sadalp``. The ``int8-full``
  strategy keeps 8-bit weights (``LongSpec.limit`` 127) at 2 products per lane: every
  group alone, 3 instructions per 16 multiply-adds.
- The 16 summed values are one pixel's 16 input channels against one output channel's 16
  weights, so the input is quantized with its channels innermost in groups of 16
  (``QuantSpec.depth`` 16) and the weight decoded as ``[O/4, kh, kw, C/16, 4 (o), 16 (c)]``
  (``DecodeSpec.depth`` 16).
- A register tile is 4 pixels x 4 output channels: 16 accumulators, 8 input and 2 weight
  vectors live. Per 32 input channels it loads 16 vectors for 80 arithmetic instructions.
- At the end of the reduction, 3 ``addp`` per channel fold the 4 pixels' accumulators into
  one vector of the 4 pixels' sums, NCHW's order: dequantized, the epilogue applied, stored
  (or written int8 for the next kernel: each pixel's 4 channels shifted into one word).

The expressions are plain TIR, which LLVM selects as ``smull`` / ``smlal`` / ``addp`` on
aarch64 (the tests check the assembly) and as vector code elsewhere (the oracle tests run on
the host); the pairwise add is the NEON intrinsic where the core has it (``sadalp``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm.script import tirx as T

from ..common import FP32_WEIGHT, as_kernel, span
from ..conv import Conv2dSpec
from ..epilogue import Epilogue
from ..protocol import Spec
from .operands.decode import DecodeSpec
from .operands.quantize import QuantSpec
from .operands.tiles import Tiles, family, padding_refusal, why_not_out
from .sdot import reference_int8 as reference_int8  # the oracle: the same sums

FAMILY = "q8l_conv2d"
#: Written scheduled: no blocks for MetaSchedule to transform (not a tuning task).
#: Input channels summed per accumulator step (one 16-byte vector of a pixel).
DEPTH = 16
#: Largest weight magnitude: 4 products with inputs within +-127 fit a 16-bit lane.
WEIGHT_LIMIT = 63
#: Pixels x output channels of the register tile.
PIXELS = 4
CHANNELS = 4


def supports(spec: Conv2dSpec, profile=None) -> str:
    """Empty when this kernel takes ``spec``, else why not. Input channels are padded to a
    multiple of 16 with zeros; where that would add more than a third to the arithmetic (the
    3-channel stem) the layer is better served otherwise."""
    if spec.groups > 1 and spec.icg == 1:
        return "depthwise conv (the int8 depthwise conv's)"
    if spec.groups > 1 and (spec.icg % DEPTH or spec.ocg % CHANNELS):
        return (f"{spec.groups} groups of {spec.icg} input and {spec.ocg} output channels "
                f"(the widening int8 conv takes groups of whole {DEPTH}-channel blocks, "
                f"{CHANNELS} outputs)")
    if spec.out_channels % CHANNELS:
        return f"{spec.out_channels} output channels (int8 strategy needs a multiple of 4)"
    return padding_refusal(spec.icg, "widening int8 conv")


def takes(spec: Conv2dSpec, profile=None) -> str:
    """:func:`supports`, and for a codebook layer whether the decode kernel reads its width
    (the layer's weights reach this kernel decoded 16 at a time): the family's
    ``supports``."""
    why = supports(spec, profile)
    if not why and spec.bits != FP32_WEIGHT and not DecodeSpec.of(spec, DEPTH).supported():
        why = f"{spec.bits}-bit indices (the widening int8 conv decodes 1, 2 or 4 bits)"
    return why


@dataclasses.dataclass(frozen=True)
class LongSpec(Spec):
    """A conv the widening kernel takes, and the epilogue fused into it."""

    conv: Conv2dSpec
    epilogue: Epilogue = dataclasses.field(default_factory=Epilogue)
    sadalp: bool = False  # the NEON pairwise add (aarch64 only; plain vector code otherwise)
    #: The int8 weights' range: ``WEIGHT_LIMIT`` (4 products per 16-bit lane, 32 input
    #: channels per step) or 127 (the ``int8-full`` strategy: 2 products per lane, one group
    #: of 16 per step, ``smull`` + ``smlal2`` + ``sadalp``: 3 instructions per 16).
    limit: int = WEIGHT_LIMIT
    out: QuantSpec | None = None  # int8 outputs in this layout, as DepthwiseSpec.out
    fcvtns: bool = False  # int8 outputs rounded and converted by one NEON fcvtns

    def __post_init__(self):
        why = supports(self.conv)
        if why:
            raise ValueError(why)
        if self.limit not in (WEIGHT_LIMIT, 127):
            raise ValueError(f"weight limit {self.limit} (either {WEIGHT_LIMIT} or 127)")
        if self.out is not None and why_not_out(self, self.out):
            raise ValueError(why_not_out(self, self.out))

    @property
    def quant(self) -> QuantSpec:
        return QuantSpec.of(self.conv, depth=DEPTH)

    @property
    def groups16(self) -> int:
        """Groups of 16 input channels an output's sum runs over (its group's, where the
        conv is grouped)."""
        s = self.conv
        return self.quant.c4 // DEPTH if s.groups == 1 else s.icg // DEPTH

    @property
    def weight_shape(self) -> tuple[int, ...]:
        s = self.conv
        return (s.out_channels // 4, *s.kernel, self.groups16, 4, DEPTH)

    @property
    def name(self) -> str:
        return (FAMILY + self.conv.name.split("conv2d", 1)[1] + self.epilogue.suffix
                + ("_w127" if self.limit == 127 else "")
                + (f"_to_{self.out.name}" if self.out is not None else ""))


def _half(v, hi: int):
    """Bytes ``8 * hi ..`` of a 16-byte vector, widened to 16 bits."""
    return T.Cast("int16x8", T.Shuffle([v], list(range(8 * hi, 8 * hi + 8))))


def _mac(acc, pairs, sadalp: bool):
    """``acc`` (4 x int32) plus the products ``a * w`` of each (16 x int8, 16 x int8) pair
    in ``pairs`` (one or two), summed in 16-bit lanes (``smull`` + ``smlal2`` [+ ``smlal`` +
    ``smlal2``]) then lane pairs into ``acc`` (``sadalp``). LLVM selects the pairwise add of
    the plain form as a shuffle, two narrowings and two widening adds, so on aarch64
    (``sadalp``) it is the NEON intrinsic (``saddlp``, which LLVM folds with the add)."""
    p = None
    for a, w in pairs:
        for hi in (0, 1):
            term = _half(a, hi) * _half(w, hi)
            p = term if p is None else p + term
    if sadalp:
        return acc + T.call_llvm_pure_intrin("int32x4", "llvm.aarch64.neon.saddlp.v4i32.v8i16",
                                             p)
    return acc + (T.Cast("int32x4", T.Shuffle([p], [0, 2, 4, 6]))
                  + T.Cast("int32x4", T.Shuffle([p], [1, 3, 5, 7])))


def _addp(a, b):
    """Neighbouring lanes of ``a`` then ``b`` added (``addp``)."""
    return T.Shuffle([a, b], [0, 2, 4, 6]) + T.Shuffle([a, b], [1, 3, 5, 7])


def compute(spec: LongSpec) -> tvm.tirx.PrimFunc:
    """The PrimFunc ``(Xq, s_x, W, D[, B][, R]) -> Y``, already scheduled: ``Xq`` and
    ``s_x`` from :func:`.operands.quantize.compute` of ``spec.quant``, ``W`` the int8 weight as
    ``spec.weight_shape`` (decoded by :func:`.operands.decode.compute` with depth 16, or tiled
    at compile time by :func:`.operands.decode.conv_order`); ``B``, ``R``: see
    :class:`..epilogue.Epilogue`."""
    s, ep = spec.conv, spec.epilogue
    qs = spec.quant
    n_, o_ = s.batch, s.out_channels
    kh, kw = s.kernel
    (sh, sw), (dh, dw) = s.stride, s.dilation
    xshape = tuple(int(v) for v in qs.out_shape)
    _, hp, xcbs, _, wq, _ = xshape
    cbs = spec.groups16  # the weight's groups of 16, an output's sum
    wshape = spec.weight_shape
    nx, nw, ny = int(np.prod(xshape)), int(np.prod(wshape)), n_ * o_ * s.out_h * s.out_w
    blocks = o_ // CHANNELS
    tiles = Tiles(s, ep, spec.out, spec.fcvtns, PIXELS)
    full, rest, coords = tiles.full, tiles.rest, tiles.coords
    tile = PIXELS * CHANNELS
    wide = spec.limit == 127
    q = spec.out  # the int8 layout written (None: float32 NCHW)
    fill = tiles.writer.fill() if q is not None else None
    nyo = tiles.size
    n32 = max(nyo // 4, 1)
    store = tiles.store(CHANNELS)

    def pixel(xf, n, pos, xi, lanes, r, cb, q, b):
        """Input channels ``cb*16 ..`` (of the group of output block ``b``, where grouped)
        of the input pixel of the tile's pixel ``xi`` at window position ``(r, q)``."""
        yy, x = coords(pos, xi, lanes)
        if s.groups > 1:
            cb = b * CHANNELS // s.ocg * cbs + cb
        return xf[T.Ramp((((n * hp + yy * sh + r * dh) * xcbs + cb) * wq + x * sw + q * dw)
                         * DEPTH, 1, DEPTH)]

    def weight(wf, b, r, q, cb, oi):
        return wf[T.Ramp(((((b * kh + r) * kw + q) * cbs + cb) * 4 + oi) * DEPTH, 1, DEPTH)]

    def total(acc, oi):
        """The 4 pixels' sums of channel ``oi`` of the tile (3 ``addp``)."""
        a = [acc[span(((oi * PIXELS) + xi) * 4, 4)] for xi in range(PIXELS)]
        return _addp(_addp(a[0], a[1]), _addp(a[2], a[3]))

    def products(xf, wf, n, b, pos, lanes, r, q, oi, xi, groups):
        """(input, weight) vectors of the tile's pixel ``xi`` and channel ``oi`` at window
        position ``(r, q)``, one pair per group of 16 input channels in ``groups``."""
        return [(pixel(xf, n, pos, xi, lanes, r, cb, q, b), weight(wf, b, r, q, cb, oi))
                for cb in groups]

    @T.macro
    def window_row(xf, wf, acc, n, b, pos, lanes, r, groups):
        """Window row ``r``'s products over the channel ``groups`` (a tuple of 1 or 2) added
        to every accumulator of the tile."""
        for q in T.unroll(kw):
            for oi in T.unroll(CHANNELS):
                for xi in T.unroll(PIXELS):
                    acc[T.Ramp((oi * PIXELS + xi) * 4, 1, 4)] = _mac(
                        acc[T.Ramp((oi * PIXELS + xi) * 4, 1, 4)],
                        products(xf, wf, n, b, pos, lanes, r, q, oi, xi, groups), spec.sadalp)

    @T.macro
    def tile_at(xf, wf, yf, y32, S, D, extra, acc, ob, n, b, pos, lanes):
        """One register tile: the 4 outputs at ``pos`` (see ``Tiles.coords``), channels
        ``b*4 ..``; ``lanes`` of the 4 are stored (a Python int)."""
        for i in T.unroll(tile):
            acc[T.Ramp(i * 4, 1, 4)] = T.Broadcast(T.int32(0), 4)
        for r in range(kh):
            if wide:  # 8-bit weights: one group of 16 input channels per step
                for cb in range(cbs):
                    window_row(xf, wf, acc, n, b, pos, lanes, r, (cb,))
            else:
                for cp in range(cbs // 2):  # two groups of 16 input channels per step
                    window_row(xf, wf, acc, n, b, pos, lanes, r, (cp * 2, cp * 2 + 1))
                if cbs % 2 == 1:  # the last, odd group alone
                    window_row(xf, wf, acc, n, b, pos, lanes, r, (cbs - 1,))
        store(yf, y32, ob, total, acc, S, D, extra, n, b * CHANNELS, pos, lanes)

    @T.macro
    def body(xf, wf, yf, S, D, extra):
        y32 = T.decl_buffer((n32,), "int32", data=yf.data)  # (int8 outputs: words)
        if q is not None and tiles.writer.prefill:
            fill(yf)
        for t in T.parallel(n_ * blocks):
            # the tile's accumulators: a small "global" buffer is a stack array, which LLVM
            # keeps in registers (TVM takes a "local" one in a parallel loop from the
            # workspace pool, a pointer LLVM cannot see through)
            acc = T.alloc_buffer((tile * 4,), "int32")
            ob = T.alloc_buffer((PIXELS,), "int32")
            if tiles.rows:
                for yy, xo in T.grid(s.out_h, full):
                    tile_at(xf, wf, yf, y32, S, D, extra, acc, ob, t // blocks, t % blocks,
                            (yy, xo * PIXELS), PIXELS)
            else:
                for i in range(full):
                    tile_at(xf, wf, yf, y32, S, D, extra, acc, ob, t // blocks, t % blocks,
                            (i * PIXELS,), PIXELS)
                if rest > 0:
                    tile_at(xf, wf, yf, y32, S, D, extra, acc, ob, t // blocks, t % blocks,
                            (full * PIXELS,), rest)

    def flat(buf, size, dtype):
        return T.decl_buffer((size,), dtype, data=buf.data)

    out = (n_, o_, s.out_h, s.out_w)
    yshape, ydt = (out, "float32") if q is None else (q.out_shape, q.dtype)
    if not ep.bias and not ep.residual:
        @T.prim_func(private=True)
        def func(Xq: T.Buffer(xshape, "int8"), S: T.Buffer((1,), "float32"),
                 W: T.Buffer(wshape, "int8"), D: T.Buffer((o_,), "float32"),
                 Y: T.Buffer(yshape, ydt)):
            body(flat(Xq, nx, "int8"), flat(W, nw, "int8"), flat(Y, nyo, ydt), S, D, ())
    elif ep.bias and not ep.residual:
        @T.prim_func(private=True)
        def func(Xq: T.Buffer(xshape, "int8"), S: T.Buffer((1,), "float32"),
                 W: T.Buffer(wshape, "int8"), D: T.Buffer((o_,), "float32"),
                 B: T.Buffer((o_,), "float32"), Y: T.Buffer(yshape, ydt)):
            body(flat(Xq, nx, "int8"), flat(W, nw, "int8"), flat(Y, nyo, ydt), S, D,
                 (B,))
    elif ep.residual and not ep.bias:
        @T.prim_func(private=True)
        def func(Xq: T.Buffer(xshape, "int8"), S: T.Buffer((1,), "float32"),
                 W: T.Buffer(wshape, "int8"), D: T.Buffer((o_,), "float32"),
                 R: T.Buffer(out, "float32"), Y: T.Buffer(yshape, ydt)):
            body(flat(Xq, nx, "int8"), flat(W, nw, "int8"), flat(Y, nyo, ydt), S, D,
                 (flat(R, ny, "float32"),))
    else:
        @T.prim_func(private=True)
        def func(Xq: T.Buffer(xshape, "int8"), S: T.Buffer((1,), "float32"),
                 W: T.Buffer(wshape, "int8"), D: T.Buffer((o_,), "float32"),
                 B: T.Buffer((o_,), "float32"), R: T.Buffer(out, "float32"),
                 Y: T.Buffer(yshape, ydt)):
            body(flat(Xq, nx, "int8"), flat(W, nw, "int8"), flat(Y, nyo, ydt), S, D,
                 (B, flat(R, ny, "float32")))
    return as_kernel(func, FAMILY, spec.to_json())


def schedule(func: tvm.tirx.PrimFunc, knobs: dict) -> tvm.tirx.PrimFunc:
    """The kernel rebuilt with the target's instructions (``schedules/<target>.json``:
    ``"pairwise": "sadalp"``, ``"round": "fcvtns"`` on aarch64)."""
    spec = LongSpec.from_func(func)
    return compute(dataclasses.replace(spec, sadalp=knobs.get("pairwise") == "sadalp",
                                       fcvtns=knobs.get("round") == "fcvtns"))


#: Written already scheduled; its choices (``pairwise``, ``round``) follow from the core, so
#: it has no knobs in the schedule files.
def peak(profile, bits: int):
    """``smlal``: 8 int8 products (widened to 16 bits) added a instruction."""
    del bits
    return ("smlal", 8) if profile.neon else None


KERNEL = family(FAMILY, LongSpec, compute, schedule, reference_int8, takes, peak)
