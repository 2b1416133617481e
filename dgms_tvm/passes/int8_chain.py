"""Relax pass: int8 between layers. A kernel whose outputs feed only int8 convs writes them
as those convs' quantized input itself, at a scale calibrated when the model is compiled;
their run-time quantize kernels (a max|X| pass, then a pass that rounds and lays out) go.

Before (what :mod:`.epilogue` leaves)::

    lv5 = R.call_tir(cls.dw_conv2d_..._relu6, (lv4, w, b), out_ty=R.Tensor((1, 96, 56, 56)))
    lv6 = R.call_tir(cls.q8_quant_n1_c96_h56_w56_..., (lv5,), out_ty=[Xq, R.Tensor((1,))])
    lv9 = R.call_tir(cls.q8_conv2d_..., (lv6[0], lv6[1], ...), ...)

After::

    lv5 = R.call_tir(cls.dw_conv2d_..._relu6_to_q8_quant_..., (lv4, w, b), out_ty=Xq)
    lv6 = (lv5, R.const([level / 127]))
    lv9 = R.call_tir(cls.q8_conv2d_..., (lv6[0], lv6[1], ...), ...)

Where the run-time quantize takes ``max|X| / 127`` of each input, the scale here is fixed:
``level / 127``, ``level`` the largest ``|X|`` seen on calibration inputs
(:func:`probe` exposes the candidates' outputs; :mod:`dgms_tvm.compiler` runs it), capped by
the producer's own bound (relu6: 6, :class:`~dgms_tvm.kernels.protocol.Int8Out`). An input
beyond the calibrated level is clipped to it, as in onnxruntime's static int8;
``scripts/bench_int8.py`` measures the error of both.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..kernels import FAMILIES, KERNEL_ATTR
from ..kernels.int8.operands.quantize import QuantSpec
from ..kernels.protocol import APPENDED_SHIFT
from .ops import rewrite_functions, uses


def _family(mod, value):
    """The kernel family a binding's value calls (call_tir of a codebook kernel), or None."""
    if not (isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.call_tir")
            and isinstance(value.args[0], tvm.ir.GlobalVar)):
        return None
    attrs = mod[value.args[0]].attrs
    if attrs is None or KERNEL_ATTR not in attrs:
        return None
    return FAMILIES.get(str(attrs[KERNEL_ATTR]))


def plan(mod, func) -> dict:
    """{producer var: (its QuantSpec, its bound or None, [the quantize vars it replaces])}
    of ``func``, in binding order: each producer whose every reader is a quantize of one
    spec that it can write."""
    users, _ = uses(func)
    found = {}
    for block in func.body.blocks:
        for b in block.bindings:
            family = _family(mod, getattr(b, "value", None))
            if family is None or family.int8_out is None:
                continue
            kernel = mod[b.value.args[0]]
            readers = users.get(b.var, [])
            if not readers or any(
                    v is None or not getattr(_family(mod, value), "quantize", False)
                    for v, value in readers):
                continue
            specs = {QuantSpec.from_func(mod[value.args[0]]) for _, value in readers}
            if len(specs) != 1:
                continue
            out = specs.pop()
            if family.int8_out.why_not(kernel, out) or not _constant_operands(
                    kernel, family.fusion, b.value):
                continue
            found[b.var] = (out, family.int8_out.bound(kernel), [v for v, _ in readers])
    return found


def _scale_operands(func, fusion) -> list[int]:
    """Positions of the operands of ``func`` that the scale folds into: the first of
    ``fusion.scale`` it has, and its shift (``fusion.shift``, or the one the epilogue pass
    appended)."""
    buffers = [p.name for p in func.params]  # (0.27: the params are the buffers)
    shift = fusion.shift or APPENDED_SHIFT
    names = [n for n in fusion.scale if n in buffers][:1] + ([shift] if shift in buffers
                                                            else [])
    return [buffers.index(n) for n in names]


def _constant_operands(func, fusion, call) -> bool:
    """Whether the operands the scale folds into are constants in ``call``."""
    at, args = _scale_operands(func, fusion), list(call.args[1].fields)
    return bool(at) and all(isinstance(args[i], tvm.ir.GenericConst) for i in at)


def probe(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    """(``mod`` whose ``main`` returns its outputs and then every candidate producer's
    output, in :func:`plan`'s order; how many candidates): run it on calibration inputs to
    get each one's level."""
    mod = relax.transform.ToNonDataflow()(mod)
    func = mod["main"]
    found = list(plan(mod, func))
    if not found:
        return mod, 0
    body = func.body
    outs = list(body.body.fields) if isinstance(body.body, relax.Tuple) else [body.body]
    every = outs + found
    new = relax.Function(func.params, relax.SeqExpr(body.blocks, relax.Tuple(every)),
                         relax.TupleType([e.ty for e in every]), attrs=func.attrs)
    mod = mod.clone()
    mod["main"] = new
    return relax.transform.Normalize()(mod), len(found)


def _scaled(func, fusion, args: list, factor: float) -> list:
    """``args`` of a call of ``func`` with the operands ``fusion`` names (its outputs' scale
    and shift, constants) times ``factor``."""
    for i in _scale_operands(func, fusion):
        v = args[i].value.numpy().astype(np.float64)
        args[i] = relax.const((v * factor).astype(np.float32))
    return args


def fixed_scale(level: float, bound: float | None) -> float:
    """The fixed scale of a producer whose calibrated largest ``|X|`` is ``level``."""
    top = level if bound is None else min(level, bound)
    return float(np.float32(top / 127.0))


@mutator
class _Chainer(PyExprMutator):
    def __init__(self, mod, levels, records):
        super().__init__(mod)
        self.mod, self.levels, self.records, self.kernels = mod, levels, records, {}
        self.plans: dict = {}  # producer var -> (QuantSpec, scale, quantize vars)
        self.quants: dict = {}  # quantize var -> its producer var

    def rewrite(self, func):
        found = plan(self.mod, func)
        if len(found) != len(self.levels):
            raise ValueError(f"{len(self.levels)} calibrated levels for {len(found)} "
                             f"candidates: not the module that was calibrated")
        self.plans = {v: (out, fixed_scale(level, bound), qs)
                      for (v, (out, bound, qs)), level in zip(found.items(), self.levels)
                      if level > 0}
        self.quants = {q: p for p, (_, _, qs) in self.plans.items() for q in qs}
        return self.visit_expr(func)

    def visit_var_binding_(self, binding):
        if binding.var in self.plans:
            out, scale, _ = self.plans[binding.var]
            call = binding.value
            family = _family(self.mod, call)
            func = self.mod[call.args[0]]
            name, kernel = family.int8_out.make(func, out)
            if name not in self.kernels:
                self.kernels[name] = self.builder_.add_func(kernel, name)
            args = _scaled(func, family.fusion, list(call.args[1].fields), 1.0 / scale)
            new = relax.call_tir(self.kernels[name], [self.visit_expr(a) for a in args],
                                 out_ty=relax.TensorType(out.out_shape, out.dtype))
            self.set_var_remap(binding.var, self.builder_.emit(new, binding.var.name))
            self._note(call.args[0].name_hint, name, scale)
            return
        if binding.var in self.quants:
            producer = self.get_var_remap(self.quants[binding.var])
            _, scale, _ = self.plans[self.quants[binding.var]]
            pair = relax.Tuple([producer, relax.const(np.array([scale], np.float32))])
            self.set_var_remap(binding.var, self.builder_.emit(pair, binding.var.name))
            return
        super().visit_var_binding_(binding)

    def _note(self, old: str, new: str, scale: float):
        for rec in self.records:
            if old in (rec.kernel, rec.fp32_kernel) and not rec.output:
                if rec.kernel == old:
                    rec.kernel = new
                else:
                    rec.fp32_kernel = new
                rec.output = (f"int8 for the next int8 conv, scale {scale:.6g} "
                              f"(calibrated at compile time)")
                return


def chain_int8(levels: list[float], records: list | None = None):
    """Make the pass.

    Parameters
    ----------
    levels : list of float
        Per candidate producer (in :func:`plan`'s order, as :func:`probe` returns them): its
        largest ``|X|`` on the calibration inputs; one of 0 keeps its run-time quantize.
    records : list of LayerRecord, optional
        The lowering's records: the producer's kernel name is updated and its ``output``
        says how it writes.
    """

    @tvm.transform.module_pass(opt_level=0, name="ChainInt8")
    def transform(mod: tvm.ir.IRModule, _ctx) -> tvm.ir.IRModule:
        return rewrite_functions(
            mod, _Chainer(mod, list(levels), records if records is not None else []))

    return transform
