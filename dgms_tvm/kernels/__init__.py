"""Codebook kernels: each module holds a spec, its compute, a NumPy oracle and a schedule."""

from . import conv2d, dense, depthwise, gemv, int8, int8_long
from .common import KERNEL_ATTR, SPEC_ATTR

#: Kernel family (the value of the ``dgms.kernel`` function attribute) -> its module.
FAMILIES = {conv2d.FAMILY: conv2d, dense.FAMILY: dense, depthwise.FAMILY: depthwise,
            gemv.FAMILY: gemv, int8.FAMILY: int8, int8_long.FAMILY: int8_long,
            int8.QUANT_FAMILY: int8.QUANT, int8.DECODE_FAMILY: int8.DECODE}

__all__ = ["FAMILIES", "KERNEL_ATTR", "SPEC_ATTR", "conv2d", "dense", "depthwise", "gemv",
           "int8", "int8_long"]
