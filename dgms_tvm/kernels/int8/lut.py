"""The lookup-table int8 conv of 1- and 2-bit codebook layers, for aarch64 cores without a
dot-product instruction (Cortex-A53 / A72): one ``tbl`` makes 16 lanes of 2 (2-bit) or 4
(1-bit) multiply-adds each. Compute (written already scheduled); its operands and NumPy
oracle: :mod:`.operands.lut_tables`.

The inputs are the int8 strategy's (the same quantized activations in the widening conv's
layout, :mod:`.widening`, so that int8 between layers works unchanged); the weights are
their codebook indices:

- **Tables.** For every input pixel and group of ``g = 4 / bits`` input channels ``x_t``,
  the 16 sums ``T[e] = sum_t c[digit_t(e)] * x_t`` over the codebook's int8 entries ``c``
  (``digit_t(e)``: bits ``t*b ..`` of ``e``), made in 16-bit lanes (``smull`` /
  ``smlal``) and rounded to int8 by ``SHIFT`` bits (``sqrshrn``): ``round(T / 256)``. The
  entries' int8 range (:func:`limit`) keeps every sum within +-32640, so the table holds
  +-127 and never saturates. A table is built once per input pixel and shared by every
  output channel and every window tap that reads the pixel (a 1x1 conv's only where its
  stride lands).
- **Lookups.** A weight's ``g`` indices are one 4-bit table index ``e``. One ``tbl`` over
  two neighbouring tables (32 bytes: groups ``2k`` and ``2k+1``) looks up 16 lanes: 8 output
  channels x the two groups; ``sadalp`` adds each channel's pair into a 16-bit lane. So 2
  instructions make 32 (2-bit) or 64 (1-bit) multiply-adds, where the widening conv needs
  5 for 32.
- **Accumulation.** A 16-bit lane takes at most ``FLUSH`` such steps (each adds within
  +-254: 128 x 254 = 32512) before it is widened into the 32-bit sums (``saddw``): once a
  window, a window row or a tap, whichever is the longest that fits.
- **Tile.** ``pixels`` outputs of a row x ``blocks`` x 8 output channels (the schedule
  file's ``tile``: 2 x 32 on the A72, 8 ``tbl`` per 2 table and 2 index loads; 2 x 16 on
  the in-order A53); then the tile's
  sums leave as the widening conv's do (:class:`.operands.tiles.Tiles`), dequantized by
  ``s_x * D[o]`` (``D`` carries the tables' ``2**SHIFT``).

The error this adds: a table entry is rounded to 1/256 of the products' scale, where the
widening conv's sums are exact; docs/log.md measures it on whole models.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm.script import tirx as T

from ..common import FP32_WEIGHT, as_kernel, splat
from ..conv import Conv2dSpec
from ..epilogue import Epilogue
from ..protocol import Spec
from .operands.lut_tables import SHIFT, group, reference
from .operands.lut_tables import entries as entries
from .operands.lut_tables import limit as limit
from .operands.lut_tables import pack as pack
from .operands.quantize import QuantSpec
from .operands.tiles import Tiles, family, padding_refusal, why_not_out

FAMILY = "q8t_conv2d"
#: Input channels per quantized group (the widening conv's layout).
DEPTH = 16
#: Lookup steps a 16-bit accumulator lane takes before it is widened.
FLUSH = 128
#: Output channels a ``tbl`` looks up (two lanes each).
LANES = 8
#: The fewest ``tbl`` per table built for which the lookup-table conv is taken: below it,
#: building the tables costs more than the lookups save against the widening conv (1x1
#: convs of fewer than 128 output channels; the measurements: docs/kernels.md).
MIN_LOOKUPS = 16
TBL2 = "llvm.aarch64.neon.tbl2.v16i8"
SADDLP = "llvm.aarch64.neon.saddlp.v8i16.v16i8"
SQRSHRN = "llvm.aarch64.neon.sqrshrn.v8i8"


def lookups(spec: Conv2dSpec) -> float:
    """How many ``tbl`` read each table built: one per 8 output channels and window tap,
    over the pixels a table serves (a 1x1 conv builds only the tables its stride reads)."""
    (kh, kw), (sh, sw) = spec.kernel, spec.stride
    per_tap = spec.out_channels / LANES
    return per_tap if (kh, kw) == (1, 1) else per_tap * kh * kw / (sh * sw)


def supports(spec: Conv2dSpec, profile=None) -> str:
    """Empty when the lowering gives ``spec`` this kernel, else why not: :func:`fits`, and
    enough lookups per table to pay for building it (:data:`MIN_LOOKUPS`)."""
    del profile
    why = fits(spec)
    if not why and lookups(spec) < MIN_LOOKUPS:
        why = (f"each table would be read {lookups(spec):g} times (the lookup-table conv "
               f"pays from {MIN_LOOKUPS})")
    return why


def fits(spec: Conv2dSpec) -> str:
    """Empty when this kernel can compute ``spec``, else why not."""
    if spec.bits == FP32_WEIGHT:
        return "no codebook (the lookup-table conv needs indices)"
    if spec.bits not in (1, 2):
        return f"{spec.bits}-bit weights (the lookup-table conv takes 1- and 2-bit codebooks)"
    if spec.groups != 1:
        return "grouped / depthwise conv (the lookup-table conv needs groups == 1)"
    if spec.out_channels % LANES:
        return f"{spec.out_channels} output channels (the lookup-table conv needs 8s)"
    return padding_refusal(spec.in_channels, "lookup-table conv")


@dataclasses.dataclass(frozen=True)
class LutSpec(Spec):
    """A conv the lookup-table kernel takes, and the epilogue fused into it."""

    conv: Conv2dSpec
    epilogue: Epilogue = dataclasses.field(default_factory=Epilogue)
    blocks: int = 4  # groups of 8 output channels per register tile
    pixels: int = 2  # outputs of a row per register tile
    neon: bool = False  # tbl / sadalp / sqrshrn (aarch64); plain vector code elsewhere
    out: QuantSpec | None = None  # int8 outputs in this layout, as LongSpec.out
    fcvtns: bool = False

    def __post_init__(self):
        why = fits(self.conv)
        if why:
            raise ValueError(why)
        if self.conv.out_channels % (LANES * self.blocks):
            raise ValueError(f"{self.conv.out_channels} output channels in tiles of "
                             f"{LANES * self.blocks}")
        if self.blocks not in (1, 2, 4):
            raise ValueError(f"{self.blocks} blocks of 8 channels a tile (1, 2 or 4)")
        if self.pixels not in (2, 4):
            raise ValueError(f"{self.pixels} pixels a tile (2 or 4)")
        if self.out is not None and why_not_out(self, self.out):
            raise ValueError(why_not_out(self, self.out))

    @classmethod
    def of(cls, conv: Conv2dSpec, tile=None, **kw) -> LutSpec:
        """The spec with the register tile ``tile`` (``[pixels, blocks]``: the schedule
        file's ``q8t_conv2d.tile``, 2 x 4 blocks by default), its blocks rounded down to
        what ``conv``'s output channels fill. The weight's layout follows the tile, so the
        lowering fixes it, not the schedule."""
        pixels, most = tile or (2, 4)
        blocks = next(b for b in (4, 2, 1) if b <= most and conv.out_channels % (b * LANES)
                      == 0)
        return cls(conv, blocks=blocks, pixels=pixels, **kw)

    @property
    def g(self) -> int:
        return group(self.conv.bits)

    @property
    def quant(self) -> QuantSpec:
        return QuantSpec.of(self.conv, depth=DEPTH)

    @property
    def tables(self) -> int:
        """Tables per input pixel."""
        return self.quant.c4 // self.g

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """``[O / (8 * blocks), kh, kw, tables / 2, blocks, 16]`` table indices (:func:`pack`)."""
        s = self.conv
        return (s.out_channels // (LANES * self.blocks), *s.kernel, self.tables // 2,
                self.blocks, 16)

    @property
    def name(self) -> str:
        return (FAMILY + self.conv.name.split("conv2d", 1)[1] + self.epilogue.suffix
                + (f"_to_{self.out.name}" if self.out is not None else ""))


def _tbl(spec: LutSpec, tb, base, idx):
    """The 16 bytes of the 32 at ``tb[base ..]`` that ``idx`` selects (``tbl``)."""
    if spec.neon:
        return T.call_llvm_pure_intrin("int8x16", TBL2, tb[T.Ramp(base, 1, 16)],
                                       tb[T.Ramp(base + 16, 1, 16)], idx)
    return T.Shuffle([tb[base + T.Cast("int32", T.Shuffle([idx], [i]))] for i in range(16)],
                     list(range(16)))


def _pairs(spec: LutSpec, v):
    """Neighbouring lanes of 16 bytes added into 8 16-bit lanes (``saddlp``)."""
    if spec.neon:
        return T.call_llvm_pure_intrin("int16x8", SADDLP, v)
    return (T.Cast("int16x8", T.Shuffle([v], list(range(0, 16, 2))))
            + T.Cast("int16x8", T.Shuffle([v], list(range(1, 16, 2)))))


def _narrow(spec: LutSpec, v):
    """16 16-bit sums rounded right by ``SHIFT`` bits to int8 (``sqrshrn``; they fit)."""
    if spec.neon:
        halves = [T.call_llvm_pure_intrin("int8x8", SQRSHRN, T.Shuffle([v], list(
            range(h * 8, h * 8 + 8))), T.int32(SHIFT)) for h in (0, 1)]
        return T.Shuffle(halves, list(range(16)))
    return T.Cast("int8x16", (v + splat(T.int16(1 << (SHIFT - 1)), 16))
                  >> splat(T.int16(SHIFT), 16))


def _flushes(spec: LutSpec) -> str:
    """How often the 16-bit sums are widened: once a ``window``, a window ``row`` or a
    ``tap``, the longest whose steps (``tables / 2`` a tap) fit ``FLUSH``; ``chunk``: parts
    of a tap."""
    kh, kw = spec.conv.kernel
    steps = spec.tables // 2
    for level, n in (("window", kh * kw), ("row", kw), ("tap", 1)):
        if n * steps <= FLUSH:
            return level
    return "chunk"


def compute(spec: LutSpec) -> tvm.tirx.PrimFunc:
    """The PrimFunc ``(Xq, s_x, W, Cv, D[, B][, R]) -> Y``, already scheduled: ``Xq`` and
    ``s_x`` from :func:`.operands.quantize.compute` of ``spec.quant``, ``W`` the table indices
    (:func:`pack`), ``Cv`` the table-building entries (:func:`entries`); ``B``, ``R``: see
    :class:`..epilogue.Epilogue`."""
    s, ep = spec.conv, spec.epilogue
    n_, o_ = s.batch, s.out_channels
    kh, kw = s.kernel
    (sh, sw), (dh, dw) = s.stride, s.dilation
    xshape = tuple(int(v) for v in spec.quant.out_shape)
    _, hp, cbs, _, wq, _ = xshape
    g, ntab, px, nq = spec.g, spec.tables, spec.pixels, spec.blocks
    steps = ntab // 2
    wshape = spec.weight_shape
    nx, nw, ny = int(np.prod(xshape)), int(np.prod(wshape)), n_ * o_ * s.out_h * s.out_w
    ch = LANES * nq  # output channels of a tile
    nblk = o_ // ch
    tiles = Tiles(s, ep, spec.out, spec.fcvtns, px)
    full, rest, coords = tiles.full, tiles.rest, tiles.coords
    fill = tiles.writer.fill() if spec.out is not None else None
    nyo = tiles.size
    n32 = max(nyo // 4, 1)
    store = tiles.store(ch)
    cells = px * nq
    level = _flushes(spec)
    chunk = min(steps, FLUSH)

    # A 1x1 conv reads only the pixels its stride lands on: their tables alone are built,
    # as a grid of the output's size (the conv then reads it with stride 1).
    compact = (kh, kw) == (1, 1)
    th, tw = (s.out_h, s.out_w) if compact else (hp, wq)
    (ts_h, ts_w), (cs_h, cs_w) = ((sh, sw), (1, 1)) if compact else ((1, 1), (sh, sw))

    def table(xf, cf, n, y, x, k):
        """The 16 entries of table ``k`` of the input pixel of table pixel ``(y, x)``."""
        v = None
        for t in range(g):
            c = k * g + t
            xv = xf[(((n * hp + y * ts_h) * cbs + c // DEPTH) * wq + x * ts_w) * DEPTH
                    + c % DEPTH]
            term = (T.Cast("int16x16", T.Broadcast(xv, 16))
                    * T.Cast("int16x16", cf[T.Ramp(t * 16, 1, 16)]))
            v = term if v is None else v + term
        return _narrow(spec, v)

    def at(n, pos, xi, lanes, r, q, kk):
        """Where the tables of step ``kk`` of the tile's pixel ``xi`` at window position
        ``(r, q)`` start: ``[N, th, tables / 2, tw, 32]``, so that a step's tables of the
        tile's pixels are close (one base register, immediate offsets)."""
        yy, x = coords(pos, xi, lanes)
        return (((n * th + yy * cs_h + r * dh) * steps + kk) * tw + x * cs_w + q * dw) * 32

    def total(acc, oi):
        """Channel ``oi`` of the tile: its pixels' sums."""
        return acc[T.Ramp(oi, ch, px)]

    @T.macro
    def lookups(tb, wf, acc16, n, b, pos, lanes, r, q, k0, nk):
        """Steps ``k0 .. k0 + nk`` of window position ``(r, q)`` added to the 16-bit sums."""
        for k2 in range(nk // 2):
            for u in T.unroll(2):  # (steps come in twos)
                for xi in T.unroll(px):
                    for j in T.unroll(nq):
                        acc16[T.Ramp((xi * nq + j) * LANES, 1, LANES)] = acc16[
                            T.Ramp((xi * nq + j) * LANES, 1, LANES)] + _pairs(spec, _tbl(
                                spec, tb, at(n, pos, xi, lanes, r, q, k0 + k2 * 2 + u),
                                wf[T.Ramp(((((b * kh + r) * kw + q) * steps + k0 + k2 * 2 + u)
                                           * nq + j) * 16, 1, 16)]))

    @T.macro
    def widen(acc16, acc32):
        """The 16-bit sums into the 32-bit ones, and cleared."""
        for i in T.unroll(cells):
            acc32[T.Ramp(i * LANES, 1, LANES)] = acc32[T.Ramp(i * LANES, 1, LANES)] + T.Cast(
                "int32x8", acc16[T.Ramp(i * LANES, 1, LANES)])
            acc16[T.Ramp(i * LANES, 1, LANES)] = T.Broadcast(T.int16(0), LANES)

    @T.macro
    def tile_at(tb, wf, yf, y32, S, D, extra, acc16, acc32, ob, n, b, pos, lanes):
        """One register tile: the ``px`` outputs at ``pos`` (``Tiles.coords``), channels
        ``b * ch ..``; ``lanes`` of them are stored (a Python int)."""
        for i in T.unroll(cells):
            acc16[T.Ramp(i * LANES, 1, LANES)] = T.Broadcast(T.int16(0), LANES)
            acc32[T.Ramp(i * LANES, 1, LANES)] = T.Broadcast(T.int32(0), LANES)
        if level == "window":
            for r, q in T.grid(kh, kw):
                lookups(tb, wf, acc16, n, b, pos, lanes, r, q, 0, steps)
            widen(acc16, acc32)
        elif level == "row":
            for r in range(kh):
                for q in range(kw):
                    lookups(tb, wf, acc16, n, b, pos, lanes, r, q, 0, steps)
                widen(acc16, acc32)
        else:
            for r, q in T.grid(kh, kw):
                for c in range((steps + chunk - 1) // chunk):
                    lookups(tb, wf, acc16, n, b, pos, lanes, r, q, c * chunk,
                            T.min(chunk, steps - c * chunk))
                    widen(acc16, acc32)
        store(yf, y32, ob, total, acc32, S, D, extra, n, b * ch, pos, lanes)

    @T.macro
    def body(xf, wf, cf, yf, S, D, extra):
        y32 = T.decl_buffer((n32,), "int32", data=yf.data)  # (int8 outputs: words)
        tb = T.alloc_buffer((n_ * th * tw * ntab * 16,), "int8")
        for row in T.parallel(n_ * th):
            for kk, x, h in T.grid(steps, tw, 2):
                tb[T.Ramp(((row * steps + kk) * tw + x) * 32 + h * 16, 1, 16)] = table(
                    xf, cf, row // th, row % th, x, kk * 2 + h)
        if spec.out is not None and tiles.writer.prefill:
            fill(yf)
        for t in T.parallel(n_ * nblk):
            # stack arrays LLVM keeps in registers (see int8.widening)
            acc16 = T.alloc_buffer((cells * LANES,), "int16")
            acc32 = T.alloc_buffer((cells * LANES,), "int32")
            ob = T.alloc_buffer((px,), "int32")
            if tiles.rows:
                for yy, xo in T.grid(s.out_h, full):
                    tile_at(tb, wf, yf, y32, S, D, extra, acc16, acc32, ob, t // nblk,
                            t % nblk, (yy, xo * px), px)
            else:
                for i in range(full):
                    tile_at(tb, wf, yf, y32, S, D, extra, acc16, acc32, ob, t // nblk,
                            t % nblk, (i * px,), px)
                if rest > 0:
                    tile_at(tb, wf, yf, y32, S, D, extra, acc16, acc32, ob, t // nblk,
                            t % nblk, (full * px,), rest)

    def flat(buf, size, dtype):
        return T.decl_buffer((size,), dtype, data=buf.data)

    out = (n_, o_, s.out_h, s.out_w)
    yshape, ydt = (out, "float32") if spec.out is None else (spec.out.out_shape,
                                                             spec.out.dtype)
    cshape = (g, 16)
    if not ep.bias and not ep.residual:
        @T.prim_func(private=True)
        def func(Xq: T.Buffer(xshape, "int8"), S: T.Buffer((1,), "float32"),
                 W: T.Buffer(wshape, "uint8"), Cv: T.Buffer(cshape, "int8"),
                 D: T.Buffer((o_,), "float32"), Y: T.Buffer(yshape, ydt)):
            body(flat(Xq, nx, "int8"), flat(W, nw, "uint8"), flat(Cv, g * 16, "int8"),
                 flat(Y, nyo, ydt), S, D, ())
    elif ep.bias and not ep.residual:
        @T.prim_func(private=True)
        def func(Xq: T.Buffer(xshape, "int8"), S: T.Buffer((1,), "float32"),
                 W: T.Buffer(wshape, "uint8"), Cv: T.Buffer(cshape, "int8"),
                 D: T.Buffer((o_,), "float32"), B: T.Buffer((o_,), "float32"),
                 Y: T.Buffer(yshape, ydt)):
            body(flat(Xq, nx, "int8"), flat(W, nw, "uint8"), flat(Cv, g * 16, "int8"),
                 flat(Y, nyo, ydt), S, D, (B,))
    elif ep.residual and not ep.bias:
        @T.prim_func(private=True)
        def func(Xq: T.Buffer(xshape, "int8"), S: T.Buffer((1,), "float32"),
                 W: T.Buffer(wshape, "uint8"), Cv: T.Buffer(cshape, "int8"),
                 D: T.Buffer((o_,), "float32"), R: T.Buffer(out, "float32"),
                 Y: T.Buffer(yshape, ydt)):
            body(flat(Xq, nx, "int8"), flat(W, nw, "uint8"), flat(Cv, g * 16, "int8"),
                 flat(Y, nyo, ydt), S, D, (flat(R, ny, "float32"),))
    else:
        @T.prim_func(private=True)
        def func(Xq: T.Buffer(xshape, "int8"), S: T.Buffer((1,), "float32"),
                 W: T.Buffer(wshape, "uint8"), Cv: T.Buffer(cshape, "int8"),
                 D: T.Buffer((o_,), "float32"), B: T.Buffer((o_,), "float32"),
                 R: T.Buffer(out, "float32"), Y: T.Buffer(yshape, ydt)):
            body(flat(Xq, nx, "int8"), flat(W, nw, "uint8"), flat(Cv, g * 16, "int8"),
                 flat(Y, nyo, ydt), S, D, (B, flat(R, ny, "float32")))
    return as_kernel(func, FAMILY, spec.to_json())


def schedule(func: tvm.tirx.PrimFunc, knobs: dict) -> tvm.tirx.PrimFunc:
    """The kernel rebuilt with the target's instructions (``"lookup": "tbl"``, ``"round":
    "fcvtns"`` on aarch64). Its tile is the lowering's (:meth:`LutSpec.of`): the weight's
    layout follows it."""
    spec = LutSpec.from_func(func)
    return compute(dataclasses.replace(spec, neon=knobs.get("lookup") == "tbl",
                                       fcvtns=knobs.get("round") == "fcvtns"))


def peak(profile, bits: int):
    """One ``tbl`` over two tables: 16 entries, each the sum of 2 (2-bit) or 4 (1-bit)
    products."""
    return ("tbl", 16 * (4 // bits)) if profile.neon and bits in (1, 2) else None


KERNEL = family(FAMILY, LutSpec, compute, schedule, reference, supports, peak)
