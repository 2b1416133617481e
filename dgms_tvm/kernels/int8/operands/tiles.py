"""The register tiles of the aarch64 int8 convs without ``sdot`` (the widening conv,
:mod:`..widening`, and the lookup-table conv, :mod:`..lut`): where a tile's pixels are
and how its sums leave it, whatever computed them.

A tile is ``pixels`` consecutive outputs of one row where the rows split into such runs,
else of the plane (rows flattened, a tile may span two), so that no tile computes columns
past a row's end (a 7-wide plane in fours: 13 tiles, not 14 of which 7 are partial). Its
sums leave it a channel at a time, as one vector of its pixels' int32 sums: dequantized
(``float(acc) * s_x * D[o]``), the epilogue applied, stored in NCHW; or written int8 for the
next kernel (:class:`.writer.Writer`), each pixel's 4 channels shifted into one word.
"""

from __future__ import annotations

import dataclasses

from tvm.script import tirx as T

from ...common import span, splat
from ...conv import Conv2dSpec
from ...epilogue import Epilogue
from ...protocol import Fusion, KernelFamily
from . import writer
from .quantize import QuantSpec
from .writer import Writer

#: Input channels per quantized group of the convs that use these tiles.
DEPTH = 16


def padding_refusal(channels: int, conv: str) -> str:
    """Why ``conv`` (a name for the record) should not take ``channels`` input channels: it
    pads them to groups of 16 with zeros, and where that adds more than a third to the
    arithmetic (the 3-channel stem) the layer is better served otherwise; or ``""``."""
    padded = (channels + DEPTH - 1) // DEPTH * DEPTH
    if 3 * (padded - channels) > channels:
        return (f"{channels} input channels (the {conv} reads 16 at a time: padding to "
                f"{padded} adds more than a third)")
    return ""


def why_not_out(spec, out: QuantSpec) -> str:
    """Why the outputs of ``spec`` (a conv spec with ``conv`` and ``epilogue``) cannot be
    written as ``out`` (16-channel groups, signed, unpadded: docs/kernels.md; no residual,
    which the fixed scale cannot reach), or ``""``."""
    if spec.epilogue.residual or any(out.padding):
        return ("it adds a residual" if spec.epilogue.residual else
                "the next conv pads its input (its own quantize costs less)")
    why = writer.why_not(spec.conv.out_shape, out)
    if why:
        return why
    if out.depth != DEPTH or out.offset:
        return "the next kernel reads other channel groups, or unsigned values"
    return ""


@dataclasses.dataclass(frozen=True)
class Tiles:
    """The tiles of ``conv``'s outputs, ``pixels`` to a tile, and their output stage."""

    conv: Conv2dSpec
    epilogue: Epilogue
    out: QuantSpec | None = None  # the int8 layout written (None: float32 NCHW)
    fcvtns: bool = False
    pixels: int = 4

    @property
    def rows(self) -> bool:
        return self.conv.out_w % self.pixels == 0

    @property
    def plane(self) -> int:
        return self.conv.out_h * self.conv.out_w

    @property
    def full(self) -> int:
        """Whole tiles of a row (``rows``) or of the plane."""
        return self.conv.out_w // self.pixels if self.rows else self.plane // self.pixels

    @property
    def rest(self) -> int:
        """Pixels of the plane's last, partial tile (0 where none is)."""
        return 0 if self.rows else self.plane % self.pixels

    @property
    def writer(self) -> Writer | None:
        if self.out is None:
            return None
        return Writer(self.out, relu=bool(self.epilogue.act), fcvtns=self.fcvtns)

    @property
    def size(self) -> int:
        """Elements of the output buffer (bytes where it is int8)."""
        s = self.conv
        return s.batch * s.out_channels * self.plane if self.out is None else self.writer.size

    def coords(self, pos, xi, lanes):
        """(row, column) of pixel ``xi`` of the tile at ``pos``: ``(row, first column)``,
        or ``(first flat index,)`` (past the plane's end the last pixel again: its inputs
        exist, its outputs are not stored)."""
        ow = self.conv.out_w
        if self.rows:
            return pos[0], pos[1] + xi
        p = pos[0] + xi if lanes == self.pixels else T.min(pos[0] + xi, self.plane - 1)
        return p // ow, p % ow

    def offset(self, pos):
        """The tile's first output within its plane."""
        return pos[0] * self.conv.out_w + pos[1] if self.rows else pos[0]

    def finish(self, sums, S, D, extra, n, o, pos, lanes):
        """Channel ``o``'s sums over the tile's pixels (``pixels`` x int32) dequantized, the
        epilogue applied: its ``lanes`` outputs (float32, clamped by the writer for int8)."""
        ep, px = self.epilogue, self.pixels
        v = T.Cast(f"float32x{px}", sums) * T.Broadcast(S[0] * D[o], px)
        if lanes < px:
            v = T.Shuffle([v], list(range(lanes)))
        if ep.bias:
            v = v + splat(extra[0][o], lanes)
        at = (n * self.conv.out_channels + o) * self.plane + self.offset(pos)
        if ep.residual:
            v = v + extra[-1][span(at, lanes)]
        if self.out is not None:
            return v
        if ep.act:
            v = T.max(v, splat(T.float32(0), lanes))
        if ep.act == "relu6":
            v = T.min(v, splat(T.float32(6), lanes))
        return v

    def words(self, total, acc, k0, S, D, extra, n, c0, pos, lanes):
        """The tile's int8 outputs of channels ``c0 .. c0 + 3``: pixel ``xi``'s channel
        ``oi`` is byte ``oi`` of lane ``xi`` (``total(acc, k0 + oi)``: its sums)."""
        wr, ep = self.writer, self.epilogue
        word = None
        for oi in range(4):
            r = wr.rounded(self.finish(total(acc, k0 + oi), S, D, extra, n, c0 + oi, pos, lanes),
                           lanes)
            if oi < 3 and (self.out.offset or not ep.act):  # negative: its low byte
                r = r & splat(T.int32(255), lanes)
            if oi:
                r = r << splat(T.int32(8 * oi), lanes)
            word = r if word is None else word | r
        return word

    def at_pixel(self, n, c0, pos, xi, lanes):
        """The int32 word of channels ``c0 ..`` (a multiple of 4) of the tile's pixel ``xi``
        in the int8 output."""
        yy, x = self.coords(pos, xi, lanes)
        return (self.writer.at(n * self.conv.out_channels + c0, yy, x)
                + c0 % self.out.depth) // 4

    def store(self, channels: int):
        """The macro storing a tile's outputs of ``channels`` channels from ``c0``:
        ``total(acc, k)`` gives channel ``c0 + k``'s sums. ``yf`` is the output (flat),
        ``y32`` the same as int32 words, ``ob`` a staging buffer of ``pixels`` words."""
        o_, plane, finish, words = self.conv.out_channels, self.plane, self.finish, self.words
        offset, at_pixel, int8 = self.offset, self.at_pixel, self.out is not None

        @T.macro
        def store(yf, y32, ob, total, acc, S, D, extra, n, c0, pos, lanes):
            if int8:  # each pixel's 4 channels one int32 word, staged, then a word a pixel
                for g in T.unroll(channels // 4):
                    ob[span(0, lanes)] = words(total, acc, g * 4, S, D, extra, n, c0 + g * 4,
                                               pos, lanes)
                    for xi in T.unroll(lanes):
                        y32[at_pixel(n, c0 + g * 4, pos, xi, lanes)] = ob[xi]
            else:
                for oi in T.unroll(channels):
                    yf[span((n * o_ + c0 + oi) * plane + offset(pos), lanes)] = finish(
                        total(acc, oi), S, D, extra, n, c0 + oi, pos, lanes)

        return store


def family(name: str, spec_type, compute, schedule, reference, supports,
           peak=None) -> KernelFamily:
    """The :class:`~...protocol.KernelFamily` of a conv written on these tiles (its spec has
    ``conv``, ``epilogue`` and ``out``): it takes the ops after it as its epilogue (their
    scale into ``D``) and writes the next conv's int8 input (:func:`why_not_out`)."""

    def with_epilogue(func, epilogue: Epilogue):
        """(name, kernel) of the conv ``func`` made again with ``epilogue``."""
        spec = dataclasses.replace(spec_type.from_func(func), epilogue=epilogue)
        return spec.name, compute(spec)

    return KernelFamily(name, spec_type, compute, schedule, reference, supports,
                        fusion=Fusion(with_epilogue, scale=("D",)),
                        int8_out=writer.of_spec(spec_type, compute, why_not_out,
                                                lambda spec: spec.epilogue.act), peak=peak)
