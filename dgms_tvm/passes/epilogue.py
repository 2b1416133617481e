"""Relax pass: the ops after a conv kernel done by that kernel as it writes its outputs.

Before (what :mod:`.lower_codebook` emits)::

    lv3 = R.call_tir(cls.q8_conv2d_..._pre, (lv1, lv2, w, D), out_ty=...)
    lv4 = R.nn.batch_norm(lv3, gamma, beta, mean, var, axis=1)
    lv5 = lv4[0]
    lv6 = R.add(lv5, residual)
    lv7 = R.nn.relu(lv6)

After::

    lv7 = R.call_tir(cls.q8_conv2d_..._pre_bias_res_relu, (lv1, lv2, w, D * g, B, residual),
                     out_ty=...)

The chain is an inference BatchNorm or a per-channel add, then a same-shape add (a
residual), then relu or relu6, each step the only user of the one before; each step is a
dataflow pattern (:data:`STEPS`). A kernel family says how it takes them
(:class:`~dgms_tvm.kernels.protocol.Fusion`): the operand a BatchNorm's scale folds into,
the shift operand, whether it adds a residual. Convs are taken in binding order, so where
two convs meet in one add (a ResNet block's downsample), the first one does the add. The
fused call is made where its chain ends, with the kernels that prepare its operands (the
input's quantize, the weight's decode), so that a layer's kernels stay together in main.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_op, wildcard
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..kernels import FAMILIES, KERNEL_ATTR
from ..kernels.epilogue import Epilogue
from .ops import OP, batch_norm_scale_shift, rewrite_functions, static_shape, uses

_IN, _LHS, _RHS = wildcard(), wildcard(), wildcard()
_BN = [wildcard() for _ in range(4)]  # gamma, beta, mean, var
#: The ops an epilogue folds, as dataflow patterns on the value of the step's binding.
STEPS = {
    "batch_norm": is_op("relax.nn.batch_norm")(_IN, *_BN),
    "add": is_op("relax.add")(_LHS, _RHS),
    "relu": is_op("relax.nn.relu")(_IN),
    "relu6": is_op("relax.clip")(_IN, wildcard(), wildcard()),
}


@dataclasses.dataclass
class Chain:
    """The ops a conv's kernel does after it: they end at ``end`` (the var the fused call is
    bound to); ``scale`` / ``shift`` [O] (float64) act on its outputs before the residual."""

    end: relax.Var
    epilogue: Epilogue
    scale: np.ndarray
    shift: np.ndarray
    residual: relax.Var | None
    steps: list[str]
    ops: list[relax.Var]  # the vars of the steps (dead once fused)


def _clip_bounds(call) -> tuple[float, float] | None:
    try:
        return tuple(float(v.value) for v in call.args[1:3])
    except (AttributeError, TypeError, ValueError):
        return None


class _Match:
    """The chains of one function, read from its bindings (``users``, ``bound``: see
    :func:`.ops.uses`); ``weights`` gives the values of parameters that are constants."""

    def __init__(self, users, bound, weights):
        self.users, self.bound, self.weights = users, bound, weights
        self.claimed: set = set()  # vars of ops some conv's epilogue does

    def const(self, expr) -> np.ndarray | None:
        """The value of a constant operand (a constant, a weight, a reshape of one)."""
        if isinstance(expr, tvm.ir.GenericConst):
            return expr.value.numpy()
        if isinstance(expr, relax.Var) and not isinstance(expr, relax.DataflowVar):
            return self.weights.get(expr.name)
        value = self.bound.get(expr) if isinstance(expr, relax.Var) else None
        if isinstance(value, relax.Call) and value.op == OP["relax.reshape"]:
            inner = self.const(value.args[0])
            if inner is not None:
                return inner.reshape([int(v) for v in value.ty.shape])
        return self.const(value) if isinstance(value, tvm.ir.GenericConst) else None

    def channel(self, expr, channels: int, nchw: bool = True) -> np.ndarray | None:
        """A constant per output channel, as ``[O]``: one that broadcasts so over NCHW
        (``[1, O, 1, 1]`` / ``[O, 1, 1]``), or with ``nchw=False`` a ``[O]`` vector."""
        v = self.const(expr)
        shapes = [(1, channels, 1, 1), (channels, 1, 1)] if nchw else [(channels,)]
        if v is None or tuple(v.shape) not in shapes:
            return None
        return v.reshape(channels).astype(np.float64)

    def batch_norm(self, call, var, channels):
        """((scale, shift), the var of its output 0) of an inference BatchNorm whose only use
        is its output 0, with constant parameters; else None."""
        a = call.attrs
        if int(a.axis) != 1 or bool(getattr(a, "training", False)):
            return None
        users = self.users.get(var, [])
        if len(users) != 1 or not isinstance(users[0][1], relax.TupleGetItem) \
                or users[0][1].index != 0:
            return None
        gamma, beta, mean, var_ = (self.channel(e, channels, nchw=False)
                                   for e in call.args[1:5])
        if any(v is None for v in (gamma, beta, mean, var_)):
            return None
        return batch_norm_scale_shift(a, gamma, beta, mean, var_), users[0][0]

    def chain(self, var, out_shape, residual: bool) -> Chain | None:
        """The chain after the conv bound to ``var`` (output ``out_shape``), or None."""
        o = out_shape[1]
        scale, shift = np.ones(o), np.zeros(o)
        bias, res, act, steps, ops = False, None, "", [], []
        cur = var
        while not act:
            users = self.users.get(cur, [])
            if len(users) != 1 or not isinstance(users[0][0], relax.DataflowVar):
                break
            nxt, value = users[0]
            if nxt in self.claimed:  # another conv's epilogue does it (a residual add)
                break
            if STEPS["batch_norm"].match(value) and value.args[0].same_as(cur) and res is None:
                g_b = self.batch_norm(value, nxt, o)
                if g_b is None:
                    break
                (g, b), tail = g_b
                scale, shift, bias = scale * g, shift * g + b, True
                steps.append("batch_norm")
                ops.append(nxt)
                nxt = tail
            elif STEPS["add"].match(value):
                a, b = value.args
                other = b if a.same_as(cur) else a
                if not (a.same_as(cur) or b.same_as(cur)) or other.same_as(cur):
                    break
                per = self.channel(other, o)
                if per is not None and res is None:
                    shift, bias = shift + per, True
                    steps.append("bias")
                elif residual and res is None and isinstance(other, relax.Var) and \
                        static_shape(other) == tuple(out_shape) and per is None:
                    res = other
                    steps.append("add")
                else:
                    break
            elif STEPS["relu"].match(value) and value.args[0].same_as(cur):
                act = "relu"
            elif STEPS["relu6"].match(value) and value.args[0].same_as(cur) and \
                    _clip_bounds(value) == (0.0, 6.0):
                act = "relu6"
            else:
                break
            if act:
                steps.append(act)
            ops.append(nxt)
            cur = nxt
        if not steps or not isinstance(cur, relax.DataflowVar):
            return None
        self.claimed.update(ops)
        return Chain(cur, Epilogue(bias, res is not None, act), scale, shift, res, steps, ops)


@dataclasses.dataclass
class _Plan:
    conv: relax.Var
    call: relax.Call
    chain: Chain
    moved: list  # the bindings preparing its operands, emitted with it


@mutator
class _Fuser(PyExprMutator):
    def __init__(self, mod, weights, records):
        super().__init__(mod)
        self.mod, self.weights, self.records = mod, weights, records
        self.kernels: dict = {}
        self.plans: dict = {}  # chain end var -> _Plan
        self.skip: set = set()  # bindings not emitted where they are

    def _family(self, value):
        """The kernel family a binding's value calls (call_tir of a codebook kernel)."""
        if not (isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.call_tir")
                and isinstance(value.args[0], tvm.ir.GlobalVar)):
            return None
        attrs = self.mod[value.args[0]].attrs
        if attrs is None or KERNEL_ATTR not in attrs:
            return None
        return FAMILIES.get(str(attrs[KERNEL_ATTR]))

    def rewrite(self, func):
        users, bound = uses(func)
        match = _Match(users, bound, self.weights)
        bindings = [b for block in func.body.blocks for b in block.bindings]
        for b in bindings:
            family = self._family(getattr(b, "value", None))
            if family is None or family.fusion is None or \
                    (chain := match.chain(b.var, static_shape(b.var) or (0, 0),
                                          family.fusion.residual)) is None:
                continue
            moved = self._operands(b, users, bound)
            self.plans[chain.end] = _Plan(b.var, b.value, chain,
                                          [m for m in bindings if m.var in moved])
            self.skip.update([b.var, *moved, *chain.ops[:-1]])
        return self.visit_expr(func)

    def _operands(self, conv, users, bound) -> set:
        """The vars of the bindings that prepare the operands of ``conv`` only: calls of an
        operand kernel (:attr:`KernelFamily.operand`) and their tuple items."""
        def read(call):
            return [a.tuple_value if isinstance(a, relax.TupleGetItem) else a
                    for a in call.args[1].fields]

        found, todo = set(), read(conv.value)
        while todo:
            v = todo.pop()
            value = bound.get(v) if isinstance(v, relax.DataflowVar) else None
            if v in found or value is None:
                continue
            item = isinstance(value, relax.TupleGetItem)  # an item of an operand kernel's
            family = self._family(bound.get(value.tuple_value) if item else value)
            if family is None or not family.operand:
                continue
            found.add(v)
            todo += [value.tuple_value] if item else read(value)
        readers = {conv.var}
        while True:  # keep those read only by the conv and by each other
            keep = {v for v in found if all(u in found or u in readers
                                            for u, _ in users.get(v, []))}
            if keep == found:
                return found
            found = keep

    def visit_var_binding_(self, binding):
        if binding.var in self.skip:
            return
        plan = self.plans.get(binding.var)
        if plan is None:
            super().visit_var_binding_(binding)
            return
        for b in plan.moved:
            super().visit_var_binding_(b)
        self.set_var_remap(binding.var, self.builder_.emit(self._fused(plan), binding.var.name))

    def _fused(self, plan: _Plan) -> relax.Call:
        call, chain = plan.call, plan.chain
        func = self.mod[call.args[0]]
        fusion = self._family(call).fusion
        name, kernel = fusion.make(func, chain.epilogue)
        if name not in self.kernels:
            self.kernels[name] = self.builder_.add_func(kernel, name)
        buffers = [p.name for p in func.params]  # (0.27: the params are the buffers)
        args = list(call.args[1].fields)
        i = next(buffers.index(n) for n in fusion.scale if n in buffers)
        m = args[i].value.numpy().astype(np.float64)
        args[i] = relax.const(
            (m * chain.scale.reshape(-1, *[1] * (m.ndim - 1))).astype(np.float32))
        if fusion.shift:
            j = buffers.index(fusion.shift)
            b = args[j].value.numpy().astype(np.float64)
            args[j] = relax.const((b * chain.scale + chain.shift).astype(np.float32))
        elif chain.epilogue.bias:
            args.append(relax.const(chain.shift.astype(np.float32)))
        if chain.residual is not None:
            args.append(chain.residual)
        rec = self.records.get(plan.conv)
        if rec is not None:
            rec.epilogue = "+".join(chain.steps)
            plain = call.args[0].name_hint
            if rec.kernel == plain:
                rec.kernel = name
            else:
                rec.fp32_kernel = name
        return relax.call_tir(self.kernels[name], [self.visit_expr(a) for a in args],
                              out_ty=call.ty)


def fuse_epilogues(weights: dict | None = None, records: dict | None = None):
    """Make the pass.

    Parameters
    ----------
    weights : dict of str to ndarray, optional
        The values of parameters that are constants (BatchNorm's, by parameter name).
    records : dict of relax.Var to LayerRecord, optional
        The record of each conv call's var: its ``epilogue`` and kernel name are updated.
    """

    @tvm.transform.module_pass(opt_level=0, name="FuseEpilogues")
    def transform(mod: tvm.ir.IRModule, _ctx) -> tvm.ir.IRModule:
        # (the plain kernels the fused ones replace are dead)
        return rewrite_functions(mod, _Fuser(mod, weights or {}, records or {}))

    return transform
