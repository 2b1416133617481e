"""Relax pass: an inference BatchNorm that no conv kernel took into its epilogue (an FP32
conv's, an exact layer's) as one multiply and one add per element, its scale and shift
folded at compile time.

TVM legalizes ``batch_norm`` as ``(x - mean) / sqrt(var + eps) * gamma + beta``: the root
folds to a constant, the division per element stays, and a division costs many times a
multiply on every Cortex-A (docs/log.md: where the two measures part). Here::

    y = x * s + t,   s = gamma / sqrt(var + eps),   t = beta - mean * s

with ``s`` and ``t`` computed in float64 from the constant operands, then rounded to
float32. It runs after the weights are bound (a BatchNorm whose operands are not all
constants is left as it is) and after the epilogue pass, so the convs that fold a BatchNorm
themselves still see it.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .ops import batch_norm_scale_shift

_BN = tvm.ir.Op.get("relax.nn.batch_norm")


@mutator
class _Fold(PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not (isinstance(call, relax.Call) and call.op.same_as(_BN)):
            return call
        x, *params = call.args
        ty, attrs = x.ty, call.attrs
        if (bool(attrs.training) or not all(isinstance(p, tvm.ir.GenericConst) for p in params)
                or not isinstance(ty, relax.TensorType) or ty.dtype != "float32"
                or ty.shape is None):
            return call
        s, t = batch_norm_scale_shift(attrs, *(p.value.numpy() for p in params))
        ndim = len(ty.shape)
        axis = int(attrs.axis) % ndim
        shape = [1] * ndim
        shape[axis] = s.size
        scaled = self.builder_.emit(relax.op.multiply(
            x, relax.const(s.reshape(shape).astype(np.float32))))
        out = self.builder_.emit(relax.op.add(
            scaled, relax.const(t.reshape(shape).astype(np.float32))))
        # batch_norm's value is (output, mean, var); its readers take the output
        return relax.Tuple([out, params[2], params[3]])


@tvm.transform.module_pass(opt_level=0, name="FoldBatchNorm")
def fold_batch_norm(mod: tvm.ir.IRModule, _ctx) -> tvm.ir.IRModule:
    """The pass (see the module's text)."""
    fold = _Fold(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            fold.builder_.update_func(gv, fold.visit_expr(func))
    return relax.transform.CanonicalizeBindings()(fold.builder_.finalize())
