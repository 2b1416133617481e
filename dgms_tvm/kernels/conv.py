"""A conv layer as every conv kernel sees it: its shape and parameters
(:class:`Conv2dSpec`, the spec of the codebook conv and the base of the others'), and the
conv's NumPy oracle (:func:`reference`), whatever arithmetic a kernel does."""

from __future__ import annotations

import dataclasses

import numpy as np

from .common import FP32_WEIGHT
from .protocol import Spec

#: The exact codebook conv's family (:mod:`.fp32.conv2d`), which names its kernels by
#: :attr:`Conv2dSpec.name`.
FAMILY = "cb_conv2d"


@dataclasses.dataclass(frozen=True)
class Conv2dSpec(Spec):
    """Every parameter a codebook conv2d kernel is specialised on."""

    batch: int
    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    bits: int = 4
    scaled: bool = False

    def __post_init__(self):
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"channels {self.in_channels}->{self.out_channels} "
                             f"not divisible by groups={self.groups}")
        if self.out_h < 1 or self.out_w < 1:
            raise ValueError(f"empty conv2d output for {self}")

    @property
    def icg(self) -> int:
        return self.in_channels // self.groups

    @property
    def ocg(self) -> int:
        return self.out_channels // self.groups

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.icg, *self.kernel)

    @property
    def reduction(self) -> int:
        return self.icg * self.kernel[0] * self.kernel[1]

    @property
    def out_h(self) -> int:
        pt, _, pb, _ = self.padding
        eff = (self.kernel[0] - 1) * self.dilation[0] + 1
        return (self.height + pt + pb - eff) // self.stride[0] + 1

    @property
    def out_w(self) -> int:
        _, pl, _, pr = self.padding
        eff = (self.kernel[1] - 1) * self.dilation[1] + 1
        return (self.width + pl + pr - eff) // self.stride[1] + 1

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.out_channels, self.out_h, self.out_w)

    @property
    def macs(self) -> int:
        """Multiply-adds of the conv (its own: padded channels and columns not counted)."""
        return self.batch * self.out_channels * self.out_h * self.out_w * self.reduction

    @property
    def name(self) -> str:
        """Kernel name carrying every specialised parameter."""
        s = self
        kind = "fp32_conv2d" if s.bits == FP32_WEIGHT else FAMILY
        return (f"{kind}_n{s.batch}_c{s.in_channels}_h{s.height}_w{s.width}_o{s.out_channels}"
                f"_k{s.kernel[0]}x{s.kernel[1]}_s{s.stride[0]}x{s.stride[1]}"
                f"_p{'x'.join(map(str, s.padding))}_d{s.dilation[0]}x{s.dilation[1]}"
                f"_g{s.groups}" + ("" if s.bits == FP32_WEIGHT else
                                   f"_b{s.bits}{'_scaled' if s.scaled else ''}"))


def reference(spec: Conv2dSpec, x, weight) -> np.ndarray:
    """NumPy oracle: direct convolution of ``x`` with the dense ``weight`` (float64 sum)."""
    s = spec
    pt, pl, pb, pr = s.padding
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    out = np.zeros(s.out_shape, np.float64)
    (sh, sw), (dh, dw) = s.stride, s.dilation
    oh, ow = s.out_h, s.out_w
    w = weight.astype(np.float64)
    for g in range(s.groups):
        xs = xp[:, g * s.icg:(g + 1) * s.icg]
        ws = w[g * s.ocg:(g + 1) * s.ocg]
        for r in range(s.kernel[0]):
            for q in range(s.kernel[1]):
                patch = xs[:, :, r * dh: r * dh + sh * (oh - 1) + 1: sh,
                           q * dw: q * dw + sw * (ow - 1) + 1: sw]
                out[:, g * s.ocg:(g + 1) * s.ocg] += np.einsum("nchw,oc->nohw", patch,
                                                               ws[:, :, r, q])
    return out.astype(np.float32)
