"""Relax pass: lower conv2d / matmul layers whose constant weight is a codebook.

Before::

    lv = R.nn.conv2d(x, p_layer1_conv_weight, strides=[1, 1], padding=[1, 1, 1, 1], ...)
    lv8 = R.permute_dims(p_fc_weight, axes=[1, 0])
    lv9 = R.matmul(lv7, lv8)

After::

    lv = R.call_tir(cls.cb_conv2d_n1_c64_..._b4, (x, packed_u8, codebook_f32), out_ty=...)
    lv9 = R.call_tir(cls.cb_dense_m1_n10_k512_b4, (lv7, packed_u8, codebook_f32), out_ty=...)

(plus a per-channel ``scale`` operand where the exporter folded BatchNorm into the weight).
A conv2d / dense layer that is not a codebook runs through the same kernel and schedule with
its float32 weight (``fp32_conv2d_...``), unless the policy says to leave it to TVM; so an FP32
baseline built with ``codebooks=False`` differs from the codebook build only in the weights.
Everything else is left for TVM to lower. Each candidate layer gets a
:class:`~dgms_tvm.passes.records.LayerRecord` saying what was done or why not.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..detect import NotACodebook, find_codebook
from ..kernels import conv2d as kconv
from ..kernels import dense as kdense
from ..kernels import gemv as kgemv
from ..kernels import int8 as kint8
from ..kernels.common import FP32_WEIGHT
from .records import LayerRecord, LoweringPolicy

_OP = {n: tvm.ir.Op.get(n) for n in ("relax.nn.conv2d", "relax.matmul", "relax.permute_dims")}
#: Weighted ops we recognise but have no codebook kernel for: reported, left in FP32.
_UNSUPPORTED = {tvm.ir.Op.get(f"relax.nn.{n}") for n in
                ("conv1d", "conv3d", "conv1d_transpose", "conv2d_transpose")}


def _static_shape(expr) -> tuple[int, ...] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None or ty.dtype != "float32":
        return None
    try:
        return tuple(int(d) for d in ty.shape)
    except TypeError:  # symbolic dimension
        return None


def _float32_out(dtype) -> bool:
    """Importers leave out_dtype unset (None / "" / void) or float32."""
    return dtype is None or str(dtype) in ("", "void", "float32")


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod, policy: LoweringPolicy, records: list[LayerRecord]):
        super().__init__(mod)
        self.policy, self.records, self.kernels = policy, records, {}
        self.n_const = 0

    # -- weights ---------------------------------------------------------------------------
    def _weight(self, expr) -> tuple[str, np.ndarray] | None:
        """(name, value) of a constant weight operand, or None when it is not constant."""
        if isinstance(expr, relax.Var) and not isinstance(expr, relax.DataflowVar):
            if expr.name in self.policy.weights:
                return self.policy.display_name(expr.name), self.policy.weights[expr.name]
        if isinstance(expr, relax.Var):
            bound = self.lookup_binding(expr)
            return None if bound is None else self._weight(bound)
        if isinstance(expr, tvm.ir.GenericConst):
            self.n_const += 1
            return f"constant_{self.n_const}", expr.value.numpy()
        return None

    def _codebook(self, name: str, w: np.ndarray, record: LayerRecord):
        declared = self.policy.declared.get(name)
        width = self.policy.bits
        if declared is not None:
            width = declared if width is None else min(declared, width)
        try:
            cw = find_codebook(w, width)
        except NotACodebook as err:
            record.reason = f"not a codebook: {err}"
            if declared is not None:  # declared a codebook layer: its values must agree
                record.error = (f"layer {name} (declared {declared}-bit) is not a "
                                f"{width}-bit codebook: {err}")
            return None
        record.bits, record.sparsity = cw.bits, cw.sparsity()
        record.codebook_entries = int(np.unique(cw.indices()).size)
        record.scaled = cw.scale is not None
        record.packed_bytes = cw.nbytes
        return cw

    def _kernel(self, func_factory, spec):
        if spec.name not in self.kernels:
            self.kernels[spec.name] = self.builder_.add_func(func_factory(spec), spec.name)
        return self.kernels[spec.name]

    def _operands(self, x, cw, value):
        if cw is None:
            return [x, relax.const(np.ascontiguousarray(value), "float32")]
        consts = [relax.const(cw.packed, "uint8"), relax.const(cw.codebook, "float32")]
        if cw.scale is not None:
            consts.append(relax.const(cw.scale, "float32"))
        return [x, *consts]

    def _weight_form(self, name, value, rec):
        """The codebook of the layer, or None for its float32 weight; False: leave the op."""
        cw = self._codebook(name, value, rec) if self.policy.codebooks else None
        if not self.policy.codebooks:
            rec.reason = "FP32 build"
        if cw is None and (rec.error or not self.policy.fp32_kernels):
            return False
        return cw

    def _note(self, rec, cw, spec):
        if cw is None:
            rec.fp32_kernel = spec.name
        else:
            rec.kernel = spec.name

    # -- ops -------------------------------------------------------------------------------
    def visit_call_(self, call):
        call = super().visit_call_(call)
        if call.op == _OP["relax.nn.conv2d"]:
            return self._conv2d(call)
        if call.op == _OP["relax.matmul"]:
            return self._matmul(call)
        if call.op in _UNSUPPORTED and (w := self._weight(call.args[1])) is not None:
            self.records.append(LayerRecord(w[0], call.op.name.split(".")[-1], w[1].shape,
                                            reason="no codebook kernel for this op"))
        return call

    def _conv2d(self, call):
        x, wexpr = call.args
        w = self._weight(wexpr)
        if w is None:
            return call
        name, value = w
        rec = LayerRecord(name, "conv2d", value.shape)
        self.records.append(rec)
        a = call.attrs
        xshape = _static_shape(x)
        if (a.data_layout, a.kernel_layout, a.out_layout) != ("NCHW", "OIHW", "NCHW"):
            rec.reason = f"layout {a.data_layout}/{a.kernel_layout} (only NCHW/OIHW)"
            return call
        if xshape is None or value.dtype != np.float32:
            rec.reason = "input or weight is not a static-shape float32 tensor"
            return call
        if not _float32_out(a.out_dtype):
            rec.reason = f"out_dtype {a.out_dtype}"
            return call
        cw = self._weight_form(name, value, rec)
        if cw is False:
            return call
        spec = kconv.Conv2dSpec(
            *xshape, value.shape[0], tuple(value.shape[2:]),
            stride=tuple(int(v) for v in a.strides), padding=tuple(int(v) for v in a.padding),
            dilation=tuple(int(v) for v in a.dilation), groups=int(a.groups),
            bits=FP32_WEIGHT if cw is None else cw.bits,
            scaled=cw is not None and cw.scale is not None)
        self._note(rec, cw, spec)
        out_ty = relax.TensorType(spec.out_shape, "float32")
        if cw is not None:
            rec.strategy = "exact"
            if self.policy.strategy == "int8":
                why = kint8.supports(spec)
                if not why:
                    return self._int8_conv2d(x, cw, spec, rec, out_ty)
                rec.reason = f"exact: {why}"
        gv = self._kernel(kconv.compute, spec)
        return relax.call_tir(gv, self._operands(x, cw, value), out_ty=out_ty)

    def _int8_conv2d(self, x, cw, spec, rec, out_ty):
        """Quantize the input, decode the weight (kernels of their own where they can), then the
        int8 conv (see kernels.int8)."""
        rec.strategy = "int8"
        ds = kint8.DecodeSpec.of(spec)
        unsigned = kint8.unsigned_input(self.policy.target)
        rec.kernel = kint8.name(spec, predecoded=ds.supported(), unsigned=unsigned)
        qs = kint8.QuantSpec.of(spec, unsigned)
        if qs.name not in self.kernels:
            self.kernels[qs.name] = self.builder_.add_func(kint8.quant_compute(qs), qs.name)
        q = self.builder_.emit(relax.call_tir(self.kernels[qs.name], [x], out_ty=[
            relax.TensorType(qs.out_shape, qs.dtype), relax.TensorType((1,), "float32")]))
        qcb, d = kint8.quantize_codebook(cw.codebook, cw.scale, spec.out_channels)
        xq, sx = relax.TupleGetItem(q, 0), relax.TupleGetItem(q, 1)
        if ds.supported():  # weights decoded 16 at a time by a kernel of their own
            if ds.name not in self.kernels:
                self.kernels[ds.name] = self.builder_.add_func(kint8.decode_compute(ds),
                                                               ds.name)
            w = self.builder_.emit(relax.call_tir(
                self.kernels[ds.name], [relax.const(kint8.pack_for_decode(ds, cw.indices()),
                                                    "uint8"),
                                        relax.const(kint8.q16(qcb), "int8"), sx],
                out_ty=relax.TensorType(ds.shape, "int8")))
            weights = [w]
        else:  # decoded inside the conv, one lookup per weight
            weights = [relax.const(cw.packed, "uint8"), relax.const(qcb, "int8")]
        if rec.kernel not in self.kernels:
            self.kernels[rec.kernel] = self.builder_.add_func(
                kint8.compute(spec, predecoded=len(weights) == 1, unsigned=unsigned),
                rec.kernel)
        corr = [relax.const(kint8.correction(cw.indices(), qcb), "int32")] if unsigned else []
        return relax.call_tir(self.kernels[rec.kernel], [xq, sx, *weights,
                                                         relax.const(d, "float32"), *corr],
                              out_ty=out_ty)

    def _matmul(self, call):
        x, wexpr = call.args
        if isinstance(wexpr, relax.Var) and isinstance(self.lookup_binding(wexpr), relax.Call):
            wexpr = self.lookup_binding(wexpr)
        if isinstance(wexpr, relax.Call) and wexpr.op == _OP["relax.permute_dims"]:
            axes = wexpr.attrs.axes
            if axes is not None and [int(v) for v in axes] != [1, 0]:
                return call
            w = self._weight(wexpr.args[0])  # Linear: W[N, K]
            if w is None:
                return call
            name, value = w
        else:
            w = self._weight(wexpr)  # MatMul with a constant B[K, N]
            if w is None:
                return call
            name, value = w[0], w[1].T
        rec = LayerRecord(name, "dense", value.shape)
        self.records.append(rec)
        xshape = _static_shape(x)
        if value.ndim != 2 or xshape is None or value.dtype != np.float32 or not xshape:
            rec.reason = "not a 2-D float32 weight with a static float32 input"
            return call
        if not _float32_out(call.attrs.out_dtype):
            rec.reason = f"out_dtype {call.attrs.out_dtype}"
            return call
        cw = self._weight_form(name, value, rec)
        if cw is False:
            return call
        n, k = value.shape
        m = int(np.prod(xshape[:-1]))
        x2 = x if len(xshape) == 2 else self.builder_.emit(relax.op.reshape(x, (m, k)))
        out_ty = relax.TensorType((m, n), "float32")
        y = self._gemv(x2, m, n, k, cw, value, rec, out_ty)
        if y is None:
            spec = kdense.DenseSpec(m, n, k, bits=FP32_WEIGHT if cw is None else cw.bits,
                                    scaled=cw is not None and cw.scale is not None)
            self._note(rec, cw, spec)
            if cw is not None:
                rec.strategy = "exact"
            y = relax.call_tir(self._kernel(kdense.compute, spec),
                               self._operands(x2, cw, value), out_ty=out_ty)
        if len(xshape) == 2:
            return y
        return relax.op.reshape(self.builder_.emit(y), (*xshape[:-1], n))


    def _gemv(self, x2, m, n, k, cw, value, rec, out_ty):
        """A batch-1 dense as a GEMV kernel (:mod:`..kernels.gemv`) where the target has its
        instructions; None to use the generic dense kernel."""
        target = self.policy.target
        if target is None or m != 1:
            return None
        ariths = ["fp32"] if cw is None else (
            ["int8", "exact"] if self.policy.strategy == "int8" else ["exact"])
        for arith in ariths:
            spec = kgemv.GemvSpec(1, n, k, FP32_WEIGHT if cw is None else cw.bits,
                                  arith=arith, rows=kgemv.rows_for(n, arith))
            if not kgemv.supports(spec, target):
                break
        else:
            return None
        if arith == "fp32":
            consts = [np.ascontiguousarray(value)]
        elif arith == "exact":
            scale = cw.scale if cw.scale is not None else np.ones(n, np.float32)
            consts = [kgemv.pack(spec, cw.indices()), kgemv.codebook16(cw.codebook), scale]
        else:
            q = kgemv.int8_weights(spec, cw.indices(), cw.codebook, cw.scale)
            consts = [q.packed, q.table, q.corr, q.d]
        self._note(rec, cw, spec)
        if cw is not None:
            rec.strategy = arith
        return relax.call_tir(self._kernel(kgemv.compute, spec),
                              [x2, *(relax.const(c) for c in consts)], out_ty=out_ty)


def lower_codebook_layers(policy: LoweringPolicy, records: list[LayerRecord]):
    """Make the pass.

    Parameters
    ----------
    policy : LoweringPolicy
        Constant weights by parameter name, the requested bit width, the layers declared
        quantized by metadata.
    records : list of LayerRecord
        Appended to: one record per conv2d / dense layer seen. A layer that metadata declares
        quantized but whose values are no codebook of that width is left FP32 with ``error``
        set: the caller decides (``compiler.lower`` refuses it). Exceptions cannot carry
        their type through the pass infrastructure, hence a record and not a raise.
    """

    @tvm.transform.module_pass(opt_level=0, name="LowerCodebookLayers")
    def transform(mod: tvm.ir.IRModule, _ctx) -> tvm.ir.IRModule:
        rw = _Rewriter(mod, policy, records)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rw.builder_.update_func(gv, rw.visit_expr(func))
        return relax.transform.DeadCodeElimination()(rw.builder_.finalize())

    return transform
