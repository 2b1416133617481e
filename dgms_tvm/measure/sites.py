"""A build's call sites as layers: which kernels of ``main`` make one layer (an int8 layer's
quantize, decode and gather kernels with the conv after them), the layer each group runs, and
its kind. The rows every per-layer measure and table share."""

from __future__ import annotations


def kind_of(layer) -> str:
    """The kind of a layer (:func:`dgms_tvm.compiler.site_layers`): ``depthwise``, ``1x1``,
    ``3x3 s2`` ... for a conv, ``other`` for the rest."""
    if not isinstance(layer, tuple):
        return "other"
    _, c, _, _, _, kernel, stride, _, _, groups = layer
    if groups > 1 and groups == c:
        return "depthwise"
    return f"{kernel[0]}x{kernel[1]}" + (f" s{stride[0]}" if max(stride) > 1 else "")


def group_sites(names: list[str]) -> list[list[str]]:
    """Call sites as layers: an int8 layer's quantize, decode and gather kernels join the
    site after them."""
    from ..kernels.int8 import gathered
    from ..kernels.int8.operands import decode, quantize

    out, pending = [], []
    for name in names:
        pending.append(name)
        if not name.startswith((quantize.FAMILY, decode.FAMILY, gathered.FAMILY)):
            out.append(pending)
            pending = []
    return out + ([pending] if pending else [])


def group_layer(layers: dict, group: list[str]):
    """The layer a group of call sites (:func:`group_sites`) runs: the first conv shape that
    ``layers`` (:func:`dgms_tvm.compiler.site_layers`) gives one of its kernels (a gathered
    conv's gather names the conv, its 1x1 conv does not), else its last kernel's entry."""
    return next((v for nm in group if isinstance(v := layers.get(nm), tuple)),
                layers.get(group[-1], group[-1]))
