"""Codebook kernels: each module holds a spec, its compute, a NumPy oracle and a schedule."""

from . import conv2d, dense, depthwise, gemv, int8, int8_decode, int8_long, int8_quant
from .common import KERNEL_ATTR, SPEC_ATTR

#: Kernel family (the value of the ``dgms.kernel`` function attribute) -> its module.
FAMILIES = {m.FAMILY: m for m in (conv2d, dense, depthwise, gemv, int8, int8_long, int8_quant,
                                  int8_decode)}

__all__ = ["FAMILIES", "KERNEL_ATTR", "SPEC_ATTR", "conv2d", "dense", "depthwise", "gemv",
           "int8", "int8_decode", "int8_long", "int8_quant"]
