"""The Relax ops the lowering matches, and checks on their operands."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

OP = {n: tvm.ir.Op.get(n) for n in ("relax.nn.conv2d", "relax.matmul", "relax.permute_dims",
                                      "relax.nn.batch_norm", "relax.add", "relax.nn.relu",
                                      "relax.clip", "relax.reshape")}
#: Weighted ops we recognise but have no codebook kernel for: reported, left in FP32.
UNSUPPORTED = {tvm.ir.Op.get(f"relax.nn.{n}") for n in
                ("conv1d", "conv3d", "conv1d_transpose", "conv2d_transpose")}


def static_shape(expr) -> tuple[int, ...] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None or ty.dtype != "float32":
        return None
    try:
        return tuple(int(d) for d in ty.shape)
    except TypeError:  # symbolic dimension
        return None


def float32_out(dtype) -> bool:
    """Importers leave out_dtype unset (None / "" / void) or float32."""
    return dtype is None or str(dtype) in ("", "void", "float32")


def uses(func):
    """(var -> [(binding var, value) of each binding that reads it], var -> bound value) over
    ``func``'s bindings; the function's result counts as a reader (with var None)."""
    users, bound = {}, {}

    def reads(expr):
        found = []
        relax.analysis.post_order_visit(
            expr, lambda e: found.append(e) if isinstance(e, relax.Var) else None)
        return found

    body = func.body
    for block in body.blocks:
        for b in block.bindings:
            value = getattr(b, "value", None)
            if value is None:
                continue
            bound[b.var] = value
            for v in {id(x): x for x in reads(value)}.values():
                users.setdefault(v, []).append((b.var, value))
    for v in reads(body.body):
        users.setdefault(v, []).append((None, body.body))
    return users, bound


def batch_norm_scale_shift(attrs, gamma, beta, mean, var):
    """The per-channel ``(s, t)``, in float64, with ``x * s + t`` equal to an inference
    BatchNorm of these attributes and parameters (``attrs.scale`` / ``attrs.center`` off:
    no gamma / beta)."""
    g = np.asarray(gamma, np.float64) if attrs.scale else 1.0
    s = g / np.sqrt(np.asarray(var, np.float64) + float(attrs.epsilon))
    b = np.asarray(beta, np.float64) if attrs.center else 0.0
    return s, b - np.asarray(mean, np.float64) * s


def rewrite_functions(mod, mutator) -> tvm.IRModule:
    """Every Relax function of ``mod`` through ``mutator.rewrite``, then what is left dead
    taken out (the kernels and ops a rewrite replaced): the body of this package's module
    passes."""
    entries = []
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.rewrite(func))
            entries.append(gv.name_hint)
    return relax.transform.DeadCodeElimination(entries)(mutator.builder_.finalize())
