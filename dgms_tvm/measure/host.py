"""Time kernels here: each layer of a build's ``main`` (:mod:`.sites`) with its kernels
built for this host and timed alone on random operands (an int8 layer's input quantize and
weight decode count in its row). What ``compile --choose`` measures on the host, and the
host benchmark's per-layer rows."""

from __future__ import annotations

import numpy as np

from .operands import random_inputs
from .sites import group_layer, group_sites, kind_of


def conv_key(batch, in_c, h, w, out_c, oh, ow) -> tuple:
    """A conv layer's key: its input and output shapes (what onnxruntime's profile gives)."""
    return (int(batch), int(in_c), int(h), int(w), int(out_c), int(oh), int(ow))


def layers(prepared, profile, repeat: int, number: int,
           names: dict[str, str] | None = None) -> list[dict]:
    """Each layer of ``main`` in order: its kernels, median ms, the conv's key (None for
    a layer that runs no conv), and its layer's name where ``names`` ({conv kernel: layer
    name}, from the lowering's records) has it."""
    import tvm

    from .. import compiler
    from ..kernels.conv import Conv2dSpec

    lib = tvm.compile(compiler.kernel_module(prepared), target=profile.tvm_target()).mod
    dev = tvm.cpu()
    rows = []
    by_site = compiler.site_layers(prepared)
    for kernels in group_sites(compiler.call_sites(prepared)):
        parts = []
        for name in kernels:
            args = [tvm.runtime.tensor(a, dev) for a in random_inputs(prepared[name])]
            res = lib.time_evaluator(name, dev, number=number, repeat=repeat)(*args)
            parts.append(1e3 * float(np.median(res.results)))
        layer = group_layer(by_site, kernels)
        key = None
        if isinstance(layer, tuple):
            n, c, h, w, o, kernel, stride, padding, dilation, groups = layer
            spec = Conv2dSpec(n, c, h, w, o, tuple(kernel), tuple(stride), tuple(padding),
                              tuple(dilation), groups, bits=8)
            key = conv_key(n, c, h, w, o, spec.out_h, spec.out_w)
        rows.append({"kernels": " + ".join(kernels), "ms": sum(parts), "parts": parts,
                     "key": key, "kind": kind_of(layer),
                     "layer": (names or {}).get(kernels[-1])})
    return rows
