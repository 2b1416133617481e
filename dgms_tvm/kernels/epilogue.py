"""What a conv does to its outputs as it writes them (a folded BatchNorm's shift or a bias,
a residual add, relu / relu6), and its NumPy oracle: one more operation on a value in
registers instead of a pass of its own over the whole output."""

from __future__ import annotations

import dataclasses

import numpy as np


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
