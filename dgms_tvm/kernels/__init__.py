"""Codebook kernels: each module holds a spec, its compute, a NumPy oracle and a schedule."""

from . import conv2d, dense
from .common import KERNEL_ATTR, SPEC_ATTR

#: Kernel family (the value of the ``dgms.kernel`` function attribute) -> its module.
FAMILIES = {conv2d.FAMILY: conv2d, dense.FAMILY: dense}

__all__ = ["FAMILIES", "KERNEL_ATTR", "SPEC_ATTR", "conv2d", "dense"]
