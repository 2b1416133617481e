"""The int8 conv of few input channels (the 3-channel stem) on aarch64 cores without ``sdot``
and on i8mm cores: its window's taps gathered into the input channels of a 1x1 conv, which
the widening kernel (:mod:`.widening`, groups of 16) or the smmla conv (:mod:`.smmla`,
groups of 8: ``depth``) runs.

The widening conv sums 16 input channels at a time, so a 3-channel conv would pad each tap's
3 to 16 (5.3x the arithmetic) and stays FP32 there. Here the taps go where the channels were:
a 3x3 window of 3 channels is 27 values, 5 taps (15 bytes) to each group of 16, so 2 groups
(32 channels of a 1x1 conv, 1.19x the arithmetic). Three kernels:

- the input's quantize (:mod:`.operands.quantize`, channels innermost in 4s, the conv's padding);
- this family's gather: per output pixel and tap, the 4 bytes of its input pixel (3 channels
  and the zero of the fourth) copied to byte ``(tap % per_group) * C`` of group ``tap //
  per_group``; the taps of a group go in order, so each copy's fourth byte is overwritten by
  the next tap's first, and the last tap of a group leaves zeros. One 4-byte load and store a
  tap: 9 of each per pixel for a 3x3 window. In groups of 8, where 3-byte steps would leave
  the last byte of each group unwritten, a tap takes a whole word (2 taps a group);
- the widening 1x1 conv over those columns, its weight laid out at compile time in the same
  order (:func:`columns`, zeros where no tap is), the epilogue and int8 outputs its own.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm.script import tirx as T

from ..common import KERNEL_ATTR, OPAQUE, SPEC_ATTR
from ..conv import Conv2dSpec
from ..protocol import KernelFamily, Spec
from .operands.quantize import PRESCHEDULED_ATTR, QuantSpec
from .widening import CHANNELS, DEPTH

FAMILY = "q8_im2col"
#: The input's channels are gathered as one 4-byte word a pixel (its quantize's groups of 4).
WORD = 4


def supports(spec: Conv2dSpec, profile=None) -> str:
    """Empty when the gather takes ``spec`` (a conv of at most 4 input channels, groups 1,
    output channels in 4s), else why not."""
    del profile
    if spec.groups != 1:
        return "grouped / depthwise conv (the int8 gather needs groups == 1)"
    if spec.in_channels > WORD:
        return f"{spec.in_channels} input channels (the int8 gather takes at most {WORD})"
    if spec.out_channels % CHANNELS:
        return (f"{spec.out_channels} output channels (the widening int8 conv needs a "
                f"multiple of {CHANNELS})")
    return ""


@dataclasses.dataclass(frozen=True)
class Im2colSpec(Spec):
    """The gather in front of the 1x1 widening conv that runs ``conv``."""

    conv: Conv2dSpec
    depth: int = DEPTH  # the 1x1 conv's input channels per group: 16 (widening) or 8 (smmla)

    def __post_init__(self):
        why = supports(self.conv)
        if why:
            raise ValueError(why)
        if self.depth not in (8, DEPTH):
            raise ValueError(f"groups of {self.depth} channels (8 or {DEPTH})")

    @property
    def step(self) -> int:
        """Bytes between a group's taps: the input's channels, or a whole word where those
        steps would leave the group's last byte unwritten."""
        c = self.conv.in_channels
        return c if ((self.depth - WORD) // c) * c + WORD == self.depth else WORD

    @property
    def per_group(self) -> int:
        """Taps in one group: each stores a whole word, so the last one's starts at most
        ``depth - 4`` bytes in."""
        return (self.depth - WORD) // self.step + 1

    @property
    def taps(self) -> int:
        return self.conv.kernel[0] * self.conv.kernel[1]

    @property
    def groups(self) -> int:
        return -(-self.taps // self.per_group)

    @property
    def inp(self) -> QuantSpec:
        """The quantize in front: the conv's input, padded, 4 channels innermost."""
        s = self.conv
        return QuantSpec(s.batch, s.in_channels, s.height, s.width, tuple(s.padding))

    @property
    def pointwise(self) -> Conv2dSpec:
        """The 1x1 conv that runs over the gathered columns."""
        s = self.conv
        return Conv2dSpec(s.batch, self.groups * self.depth, s.out_h, s.out_w, s.out_channels,
                          (1, 1), bits=s.bits, scaled=s.scaled)

    @property
    def out(self) -> QuantSpec:
        return QuantSpec.of(self.pointwise, depth=self.depth)

    @property
    def name(self) -> str:
        return (FAMILY + self.conv.name.split("conv2d", 1)[1]
                + (f"_d{self.depth}" if self.depth != DEPTH else ""))

    def column(self, c: int, ki: int, kj: int) -> int:
        """The 1x1 conv's input channel that input channel ``c`` at tap ``(ki, kj)`` is."""
        t = ki * self.conv.kernel[1] + kj
        return t // self.per_group * self.depth + t % self.per_group * self.step + c


def columns(spec: Im2colSpec, w: np.ndarray) -> np.ndarray:
    """The weight ``[O, C, kh, kw]`` as the 1x1 conv's ``[O, groups * 16, 1, 1]``, each
    value at its tap's column (:meth:`Im2colSpec.column`), zeros elsewhere."""
    o, c, kh, kw = w.shape
    out = np.zeros((o, spec.groups * spec.depth, 1, 1), w.dtype)
    for ci in range(c):
        for ki in range(kh):
            for kj in range(kw):
                out[:, spec.column(ci, ki, kj), 0, 0] = w[:, ci, ki, kj]
    return out


def reference(spec: Im2colSpec, xq: np.ndarray) -> np.ndarray:
    """NumPy oracle: the gathered columns (``spec.out.out_shape``) from the quantize's
    output ``xq`` (``spec.inp.out_shape``)."""
    s, d = spec.conv, spec.depth
    (sh, sw), (dh, dw) = s.stride, s.dilation
    out = np.zeros(spec.out.out_shape, np.int8)
    rows = np.arange(s.out_h)[:, None] * sh
    cols = np.arange(s.out_w)[None, :] * sw
    for ci in range(s.in_channels):
        for ki in range(s.kernel[0]):
            for kj in range(s.kernel[1]):
                k = spec.column(ci, ki, kj)
                out[:, :, k // d, 0, :s.out_w, k % d] = \
                    xq[:, rows + ki * dh, 0, 0, cols + kj * dw, ci]
    return out


def compute(spec: Im2colSpec) -> tvm.tirx.PrimFunc:
    """The PrimFunc ``Xq -> Y``, written already scheduled: output rows in parallel; per
    pixel, a zeroed last group where its taps leave bytes unwritten, then one word per tap;
    zeros in the columns past the row."""
    s = spec.conv
    xshape = tuple(int(v) for v in spec.inp.out_shape)
    yshape = tuple(int(v) for v in spec.out.out_shape)
    _, hp, _, _, wp, _ = xshape
    nx, ny = int(np.prod(xshape)), int(np.prod(yshape))
    oh, ow, kw = s.out_h, s.out_w, s.kernel[1]
    (sh, sw), (dh, dw) = s.stride, s.dilation
    c, per, groups, taps = spec.step, spec.per_group, spec.groups, spec.taps
    depth, wq = spec.depth, yshape[4]
    last = groups - 1
    zero_last = (taps - last * per - 1) * c + WORD < depth  # bytes of it no tap writes

    @T.prim_func(private=True, s_tir=True)
    def func(Xq: T.Buffer(xshape, "int8"), Y: T.Buffer(yshape, "int8")):
        with T.sblock("root"):
            xf = T.decl_buffer((nx,), "int8", data=Xq.data)
            yf = T.decl_buffer((ny,), "int8", data=Y.data)
            for r in T.parallel(s.batch * oh):
                for x in range(ow):
                    if zero_last:
                        yf[T.Ramp(((r * groups + last) * wq + x) * depth, 1, depth)] = \
                            T.Broadcast(T.int8(0), depth)
                    for t in T.unroll(taps):
                        yf[T.Ramp(((r * groups + t // per) * wq + x) * depth + t % per * c, 1,
                                  WORD)] = xf[T.Ramp(
                                      ((r // oh * hp + r % oh * sh + t // kw * dh) * wp
                                       + x * sw + t % kw * dw) * WORD, 1, WORD)]
                if wq > ow:  # the columns past the row (the smmla conv's whole 4-column
                    # runs): zeros
                    for g in range(groups):
                        for x in range(ow, wq):
                            yf[T.Ramp(((r * groups + g) * wq + x) * depth, 1, depth)] = \
                                T.Broadcast(T.int8(0), depth)

    return func.with_attrs({
        KERNEL_ATTR: FAMILY,
        SPEC_ATTR: spec.to_json(),
        PRESCHEDULED_ATTR: 1,
        "op_pattern": OPAQUE,
        "tirx.noalias": True,
    })


def schedule(func: tvm.tirx.PrimFunc, knobs: dict) -> tvm.tirx.PrimFunc:
    """Written already scheduled: no knobs."""
    del knobs
    return func


KERNEL = KernelFamily(FAMILY, Im2colSpec, compute, schedule, reference, supports,
                      operand=True)
