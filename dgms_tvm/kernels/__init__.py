"""Codebook kernels: one module (or package) per kernel family, each with a spec, its
compute, a NumPy oracle, a hand schedule and what it supports, bound by the protocol of
:mod:`.protocol`; :data:`FAMILIES` is the registry."""

from . import gemv
from .common import KERNEL_ATTR, SPEC_ATTR
from .conv import Conv2dSpec
from .fp32 import conv2d, dense, depthwise
from .int8 import depthwise as int8_depthwise
from .int8 import depthwise_rows as int8_depthwise_rows
from .int8 import gathered, lut, sdot, smmla, widening
from .int8.operands import decode, quantize
from .protocol import KernelFamily, Spec

#: Kernel family (the value of the ``dgms.kernel`` function attribute) -> its protocol.
FAMILIES: dict[str, KernelFamily] = {m.KERNEL.family: m.KERNEL for m in (
    conv2d, dense, depthwise, gemv, sdot, widening, quantize, decode, int8_depthwise,
    int8_depthwise_rows, gathered, lut, smmla)}



def conv_layer(func) -> tuple | None:
    """The conv a kernel PrimFunc runs, by its shape alone (its spec's
    :class:`~.conv.Conv2dSpec` without the weight's width): the same layer in any build,
    strategy or epilogue; None for a kernel that runs no conv (or no codebook kernel)."""
    attrs = func.attrs
    if attrs is None or KERNEL_ATTR not in attrs or str(attrs[KERNEL_ATTR]) not in FAMILIES:
        return None
    spec = FAMILIES[str(attrs[KERNEL_ATTR])].spec.from_func(func)
    conv = getattr(spec, "conv", spec)
    if not isinstance(conv, Conv2dSpec):
        return None
    return (conv.batch, conv.in_channels, conv.height, conv.width, conv.out_channels,
            conv.kernel, conv.stride, conv.padding, conv.dilation, conv.groups)


__all__ = ["FAMILIES", "KERNEL_ATTR", "SPEC_ATTR", "KernelFamily", "Spec", "conv_layer"]
