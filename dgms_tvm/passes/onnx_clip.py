"""Relax pass: an ONNX ``Clip`` as Relax's ``relu`` / ``clip``, so the ops after a conv are
seen as its epilogue.

TVM's ONNX importer (0.27) makes ``Clip(x, lo, hi)`` (PyTorch's ReLU6 and ReLU exported)
into two TE kernels, an elementwise ``maximum`` and ``minimum`` against a 0-d bound, each
bound guarded by ``where(isnan(b), -inf / inf, b)``. The epilogue pass
(:mod:`.epilogue`) knows ``relu`` and ``clip(0, 6)``, not these, so each such conv wrote its
outputs and two more kernels clipped them, and int8 between layers never saw its relu6.

Before::

    lv2 = R.isnan(R.const(0.0)); lv3 = R.where(lv2, R.const(-inf), R.const(0.0))
    lv5 = R.call_tir(maximum, (lv4, lv3), ...)
    lv6 = R.isnan(R.const(6.0)); lv7 = R.where(lv6, R.const(inf), R.const(6.0))
    lv8 = R.call_tir(minimum, (lv5, lv7), ...)

After::

    lv8 = R.clip(lv4, 0.0, 6.0)        # (a maximum against 0 alone: R.nn.relu(lv4))

The kernels are known by their structure (one store of ``max`` / ``min`` of the input and a
0-d buffer), the bounds by their constant value; anything else is left as it is.
"""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .ops import rewrite_functions, uses


def _store(stmt):
    """The one buffer store of a TE kernel's body (through its blocks and loops), or None."""
    while stmt is not None:
        if isinstance(stmt, tvm.tirx.BufferStore):
            return stmt
        inner = getattr(stmt, "block", None)
        stmt = inner if inner is not None else getattr(stmt, "body", None)
    return None


def _reads(load, param) -> bool:
    """Whether ``load`` is a load of the kernel parameter ``param`` (0.27: a TensorLoad of
    its source)."""
    src = getattr(load, "source", None)
    if src is None:
        src = getattr(load, "buffer", None)
    return src is not None and src.same_as(param) and hasattr(load, "indices")


def elementwise(func) -> str:
    """``"max"`` / ``"min"`` for a PrimFunc ``(A, b, out)`` storing ``max(A[i], b[()])`` (or
    ``min``) at ``out[i]``, else ``""``."""
    if not isinstance(func, tvm.tirx.PrimFunc) or len(func.params) != 3:
        return ""
    a, b, out = func.params  # (0.27: the params are the buffers)
    store = _store(func.body)
    if store is None or not store.buffer.same_as(out) or len(b.shape) != 0:
        return ""
    kind = type(store.value).__name__
    if kind not in ("Max", "Min"):
        return ""
    lhs, rhs = store.value.a, store.value.b
    if not (_reads(lhs, a) and _reads(rhs, b) and len(lhs.indices) == len(store.indices)
            and all(x.same_as(y) for x, y in zip(lhs.indices, store.indices))):
        return ""
    return kind.lower()


def _value(expr, bound) -> float | None:
    """The value of a 0-d float constant, through the importer's NaN guard."""
    while isinstance(expr, relax.Var) and expr in bound:
        expr = bound[expr]
    if isinstance(expr, tvm.ir.GenericConst):
        v = expr.value.numpy()
        return float(v) if v.shape == () and np.issubdtype(v.dtype, np.floating) else None
    if isinstance(expr, relax.Call) and expr.op == tvm.ir.Op.get("relax.where"):
        cond, _, keep = expr.args
        if isinstance(cond, relax.Var):
            cond = bound.get(cond, cond)
        if isinstance(cond, relax.Call) and cond.op == tvm.ir.Op.get("relax.isnan"):
            v = _value(keep, bound)
            if v is not None and _value(cond.args[0], bound) == v and not math.isnan(v):
                return v
    return None


@mutator
class _Clips(PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.mod = mod

    def rewrite(self, func):
        self.users, self.bound = uses(func)
        self.lows: dict = {}  # var of a maximum against a constant -> (its input, bound)
        return self.visit_expr(func)

    def _bound_of(self, call):
        """(``"max"`` / ``"min"``, input, constant bound) of a call of such a kernel."""
        if not (isinstance(call, relax.Call) and call.op == tvm.ir.Op.get("relax.call_tir")
                and isinstance(call.args[0], tvm.ir.GlobalVar)):
            return None
        kind = elementwise(self.mod[call.args[0]])
        args = list(call.args[1].fields)
        value = _value(args[1], self.bound) if kind and len(args) == 2 else None
        return None if value is None else (kind, args[0], value)

    def visit_var_binding_(self, binding):
        found = self._bound_of(getattr(binding, "value", None))
        if found is None:
            super().visit_var_binding_(binding)
            return
        kind, x, value = found
        new = None
        if kind == "max":
            self.lows[binding.var] = (x, value)
            if value == 0.0:
                new = relax.op.nn.relu(self.visit_expr(x))
        elif x in self.lows and len(self.users.get(x, [])) == 1:
            src, low = self.lows[x]
            new = relax.op.clip(self.visit_expr(src), low, value)
        if new is None:
            super().visit_var_binding_(binding)
            return
        self.set_var_remap(binding.var, self.builder_.emit(new, binding.var.name))


def onnx_clips():
    """Make the pass (every Relax function of the module)."""

    @tvm.transform.module_pass(opt_level=0, name="OnnxClips")
    def transform(mod: tvm.ir.IRModule, _ctx) -> tvm.ir.IRModule:
        return rewrite_functions(mod, _Clips(mod))

    return transform
