"""The epilogue a conv's kernel can do as it writes its outputs: the chain of ops after it
(an inference BatchNorm or a per-channel add, a residual add, relu / relu6), each the only
user of the one before, matched on the function's bindings. The lowering of the int8 and
depthwise convs calls :meth:`EpilogueMatcher._epilogue` and makes its fused call where the
chain ends (the ops it folded are then dead)."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ..kernels.epilogue import Epilogue
from .ops import OP, static_shape


def _clip_bounds(call) -> tuple[float, float] | None:
    try:
        return tuple(float(v.value) for v in call.args[1:3])
    except (AttributeError, TypeError, ValueError):
        return None


class EpilogueMatcher:
    """Mixin of the rewriter (:mod:`.lower_codebook`): it reads ``self.users`` /
    ``self.bound`` (the function's bindings), ``self.claimed`` (ops some conv's epilogue
    does already) and ``self._weight``."""

    def _const(self, expr) -> np.ndarray | None:
        """The value of a constant operand (a weight, a constant, a reshape of one)."""
        w = self._weight(expr)
        if w is not None:
            return w[1]
        value = self.bound.get(expr) if isinstance(expr, relax.Var) else None
        if isinstance(value, relax.Call) and value.op == OP["relax.reshape"]:
            inner = self._const(value.args[0])
            if inner is not None:
                return inner.reshape([int(v) for v in value.ty.shape])
        return value.value.numpy() if isinstance(value, tvm.ir.GenericConst) else None

    def _channel(self, expr, channels: int, nchw: bool = True) -> np.ndarray | None:
        """A constant per output channel, as ``[O]``: one that broadcasts so over NCHW
        (``[1, O, 1, 1]`` / ``[O, 1, 1]``), or with ``nchw=False`` a ``[O]`` vector."""
        v = self._const(expr)
        shapes = [(1, channels, 1, 1), (channels, 1, 1)] if nchw else [(channels,)]
        if v is None or tuple(v.shape) not in shapes:
            return None
        return v.reshape(channels).astype(np.float64)

    def _epilogue(self, var, spec, residual: bool = True):
        """The ops after the conv bound to ``var`` that its dequantize step can do, each the
        only user of the one before (BatchNorm in inference / a per-channel add, then a
        same-shape add unless ``residual`` is False, then relu or relu6): ``(last var,
        Epilogue, scale[O], shift[O], residual var or None, step names)``, or None when there
        is none."""
        o = spec.out_channels
        scale, shift = np.ones(o), np.zeros(o)
        bias, res, act, steps = False, None, "", []
        cur = var
        while not act:
            users = self.users.get(cur, [])
            if len(users) != 1 or not isinstance(users[0][0], relax.DataflowVar):
                break
            nxt, value = users[0]
            if nxt in self.claimed:  # another conv's epilogue does it (a residual add)
                break
            if not isinstance(value, relax.Call) or not value.args or (
                    not value.args[0].same_as(cur) and value.op != OP["relax.add"]):
                break
            if value.op == OP["relax.nn.batch_norm"] and res is None:
                g_b = self._batch_norm(value, nxt, o)
                if g_b is None:
                    break
                (g, b), nxt = g_b
                scale, shift, bias = scale * g, shift * g + b, True
                steps.append("batch_norm")
            elif value.op == OP["relax.add"]:
                a, b = value.args
                other = b if a.same_as(cur) else a
                if not (a.same_as(cur) or b.same_as(cur)) or other.same_as(cur):
                    break
                per = self._channel(other, o)
                if per is not None and res is None:
                    shift, bias = shift + per, True
                    steps.append("bias")
                elif residual and res is None and isinstance(other, relax.Var) and \
                        static_shape(other) == tuple(spec.out_shape) and per is None:
                    res = other
                    steps.append("add")
                else:
                    break
            elif value.op == OP["relax.nn.relu"]:
                act = "relu"
            elif value.op == OP["relax.clip"] and _clip_bounds(value) == (0.0, 6.0):
                act = "relu6"
            else:
                break
            if act:
                steps.append(act)
            cur = nxt
        if not steps or not isinstance(cur, relax.DataflowVar):
            return None
        walk = var
        while not walk.same_as(cur):
            walk = self.users[walk][0][0]
            self.claimed.add(walk)
        return cur, Epilogue(bias, res is not None, act), scale, shift, res, steps

    def _batch_norm(self, call, var, channels):
        """((scale, shift), the var of its output 0) of an inference BatchNorm whose only use
        is its output 0, with constant parameters; else None."""
        a = call.attrs
        if int(a.axis) != 1 or bool(getattr(a, "training", False)):
            return None
        users = self.users.get(var, [])
        if len(users) != 1 or not isinstance(users[0][1], relax.TupleGetItem) \
                or users[0][1].index != 0:
            return None
        gamma, beta, mean, var_ = (self._channel(e, channels, nchw=False)
                                   for e in call.args[1:5])
        if any(v is None for v in (gamma, beta, mean, var_)):
            return None
        g = (gamma if a.scale else 1.0) / np.sqrt(var_ + float(a.epsilon))
        b = (beta if a.center else 0.0) - mean * g
        return (g, b), users[0][0]
