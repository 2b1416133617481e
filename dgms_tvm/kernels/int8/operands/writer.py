"""Writing a kernel's outputs as the next int8 conv's quantized input (int8 between layers,
:mod:`dgms_tvm.passes.int8_chain`): the pieces a producer kernel shares, whatever it
computes.

A producer computes one output channel at a time (a plane of ``H x W``); the next conv reads
``[N, Hp, C/d, 1, Wp, d]`` bytes (:class:`~.quantize.QuantSpec` with one phase), its ``d``
channels innermost. So the producer rounds each output vector to int8 (:func:`Writer.value`)
into a staging plane of its channel group, and once the group's ``d`` planes are there,
:meth:`Writer.interleave` lays them out: per run of ``k`` columns, ``d`` loads and one
shuffle into ``d * k`` contiguous bytes (``st4`` on aarch64 for ``d = 4``).

The value written is ``round(y)`` clamped to ``[lo, 127]`` (``lo`` 0 after a relu, else
-127), plus the layout's offset (128 for x86 VNNI): the quantization scale is folded into
the producer's operands by the pass, and its oracle is
:func:`.quantize.quantize_fixed` at scale 1.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tvm.script import tirx as T

from ...common import best_tile, span, splat
from ...protocol import Int8Out
from .quantize import QuantSpec

#: The NEON rounding conversion (round to nearest, ties to even: NumPy's ``rint``).
FCVTNS = "llvm.aarch64.neon.fcvtns.v4i32.v4f32"


def why_not(out_shape: tuple[int, ...], out: QuantSpec) -> str:
    """Empty when outputs of ``out_shape`` (NCHW) can be written as ``out``, else why not:
    the shapes must agree, the channels fill whole groups of ``out.depth`` and the columns
    stay in order (one phase)."""
    if (out.batch, out.channels, out.height, out.width) != tuple(out_shape):
        return f"its output {tuple(out_shape)} is not the next conv's input"
    if out.channels % out.depth:
        return f"{out.channels} channels do not fill groups of {out.depth}"
    if out.phases != 1:
        return "the next conv reads its columns deinterleaved (a column stride)"
    return ""


def of_spec(spec_type, compute, why_not_out, act) -> Int8Out:
    """The :class:`~...protocol.Int8Out` of a family whose spec has an ``out`` field (the
    layout its outputs are written in, None for float32): ``why_not_out(spec, out)`` says
    why a layout cannot be written, ``act(spec)`` is its activation (relu6 bounds it)."""

    def bound(func):
        return 6.0 if act(spec_type.from_func(func)) == "relu6" else None

    def refuse(func, out):
        return why_not_out(spec_type.from_func(func), out)

    def make(func, out):
        spec = dataclasses.replace(spec_type.from_func(func), out=out)
        return spec.name, compute(spec)

    return Int8Out(bound, refuse, make)


def _fcvtns(v, lanes: int):
    """An even number of floats rounded to int32 by NEON ``fcvtns``, 4 and then 2 at a time
    (a narrow row's 14 lanes too), not a ``frinti`` and a conversion each. An odd count keeps
    LLVM's form: a 2-lane piece overlapping the one before cost more in the shuffles that put
    the pieces together than it saved (docs/log.md, "int8 between layers")."""
    chunks = [(i, 4) for i in range(0, lanes // 4 * 4, 4)] + \
        [(i, 2) for i in range(lanes // 4 * 4, lanes, 2)]
    pieces = [T.call_llvm_pure_intrin(
        f"int32x{n}", FCVTNS.replace("v4i32.v4f32", f"v{n}i32.v{n}f32"),
        v if n == lanes else T.Shuffle([v], list(range(i, i + n)))) for i, n in chunks]
    return pieces[0] if len(pieces) == 1 else T.Shuffle(pieces, list(range(lanes)))


@dataclasses.dataclass(frozen=True)
class Writer:
    """The int8 output of a producer of ``channels`` planes of ``height x width`` per image,
    laid out as ``out``."""

    out: QuantSpec
    relu: bool  # the producer's activation clamps at 0 (relu / relu6)
    fcvtns: bool = False  # round and convert with one NEON fcvtns (4 lanes)

    @property
    def depth(self) -> int:
        return self.out.depth

    @property
    def dtype(self) -> str:
        return self.out.dtype

    @property
    def size(self) -> int:
        return int(np.prod(self.out.out_shape))

    @property
    def prefill(self) -> bool:
        """Whether the next conv reads bytes no output lands on (its padding, columns past
        the row): they hold the pad value."""
        return any(self.out.padding) or self.out.extra > 0

    @property
    def run(self) -> int:
        """Columns per interleaved run (``d * run`` bytes, at most 64): a power of 2 where
        one divides the width (whole vectors: a 56-byte run of 14 columns of 4 channels is a
        shuffle LLVM splits lane by lane), else the largest divisor."""
        top = max(1, 64 // self.depth)
        pow2 = [k for k in (16, 8, 4, 2) if k <= top and self.out.width % k == 0]
        return pow2[0] if pow2 else best_tile(self.out.width, top)

    def value(self, v, lanes: int):
        """``lanes`` float outputs as stored int8: clamp, round, offset."""
        return self.narrow(self.rounded(v, lanes), lanes)

    def rounded(self, v, lanes: int):
        """``lanes`` float outputs clamped, rounded and offset, still int32 (the widening
        conv packs 4 of them into one word instead of :meth:`narrow`)."""
        v = T.max(v, splat(T.float32(0 if self.relu else -127), lanes))
        v = T.min(v, splat(T.float32(127), lanes))
        if self.fcvtns and lanes % 2 == 0:
            r = _fcvtns(v, lanes)
        else:
            r = T.Cast("int32" if lanes == 1 else f"int32x{lanes}", T.round(v))
        if self.out.offset:
            r = r + splat(T.int32(self.out.offset), lanes)
        return r

    def narrow(self, r, lanes: int):
        return T.Cast(self.dtype if lanes == 1 else f"{self.dtype}x{lanes}", r)

    def at(self, nc0, y, x):
        """Where output ``(y, x)`` of the channel group starting at flat channel ``nc0``
        (``n * C + c``) starts in the output."""
        q = self.out
        _, hp, cbs, _, wq, d = (int(v) for v in q.out_shape)
        return ((nc0 // q.channels * hp + y + q.padding[0]) * cbs
                + nc0 % q.channels // d) * wq * d + (x + q.padding[1]) * d

    def fill(self):
        """The macro writing the pad value over the whole output (``Qf``: flat)."""
        lo = max(v for v in (1, 4, 16) if self.size % v == 0)
        pad = T.Cast(self.dtype, float(self.out.offset))
        size = self.size

        @T.macro
        def fill(Qf):
            for i in T.parallel(size // lo):
                Qf[span(i * lo, lo)] = splat(pad, lo)

        return fill

    def interleave(self):
        """The macro laying the ``d`` staged planes ``st`` (``[d, H * W]``, flat) of the
        channel group at ``nc0`` into the output ``Qf`` (flat)."""
        h, w, d, k = self.out.height, self.out.width, self.depth, self.run
        order = [(i % d) * k + i // d for i in range(d * k)]  # lane i: channel i % d
        at = self.at

        def runs(st, y, x0):
            return T.Shuffle([st[T.Ramp((i * h + y) * w + x0 * k, 1, k)] for i in range(d)],
                             order)

        @T.macro
        def interleave(st, Qf, nc0):
            for y, x0 in T.grid(h, w // k):
                if k == 1:
                    for i in T.unroll(d):
                        Qf[at(nc0, y, x0) + i] = st[(i * h + y) * w + x0]
                else:
                    Qf[T.Ramp(at(nc0, y, x0 * k), 1, d * k)] = runs(st, y, x0)

        return interleave
