"""Codebook kernels: one module (or package) per kernel family, each with a spec, its
compute, a NumPy oracle, a hand schedule and what it supports, bound by the protocol of
:mod:`.protocol`; :data:`FAMILIES` is the registry."""

from . import conv2d, dense, depthwise, gemv, int8, int8_decode, int8_long, int8_quant
from .common import KERNEL_ATTR, SPEC_ATTR
from .protocol import KernelFamily, Spec

#: Kernel family (the value of the ``dgms.kernel`` function attribute) -> its protocol.
FAMILIES: dict[str, KernelFamily] = {m.KERNEL.family: m.KERNEL for m in (
    conv2d, dense, depthwise, gemv, int8, int8_long, int8_quant, int8_decode)}

__all__ = ["FAMILIES", "KERNEL_ATTR", "SPEC_ATTR", "KernelFamily", "Spec", "conv2d", "dense",
           "depthwise", "gemv", "int8", "int8_decode", "int8_long", "int8_quant"]
