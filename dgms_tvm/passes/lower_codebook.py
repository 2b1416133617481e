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

import dataclasses

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .. import interrupt, strategies
from ..detect import NotACodebook, find_codebook
from ..kernels import FAMILIES
from ..kernels.common import FP32_WEIGHT
from ..kernels.fp32 import conv2d as kconv
from ..kernels.fp32 import depthwise as kdw
from ..kernels.int8 import depthwise as kdw8
from ..kernels.int8 import depthwise_rows as kdwr
from ..kernels.int8 import gathered as kgathered
from ..kernels.int8 import lut as klut
from .dense import DenseLowering
from .epilogue import fuse_epilogues
from .int8_conv import Int8ConvLowering
from .ops import OP, UNSUPPORTED, float32_out, static_shape
from .records import LayerRecord, LoweringPolicy
from .zero_skip import skip_zero_inputs

#: The int8 depthwise families, by name: their modules (``lowered``).
INT8_DW = {kdw8.FAMILY: kdw8, kdwr.FAMILY: kdwr}


@mutator
class _Rewriter(PyExprMutator, DenseLowering, Int8ConvLowering):
    """Codebook layers to kernel calls: conv2d here, dense (:mod:`.dense`) and the int8 conv
    (:mod:`.int8_conv`) in mixins of their own. The ops after a conv are left to the
    epilogue pass (:mod:`.epilogue`)."""

    def __init__(self, mod, policy: LoweringPolicy, records: list[LayerRecord]):
        super().__init__(mod)
        self.policy, self.records, self.kernels = policy, records, {}
        self.n_const = 0
        self.layer_of: dict = {}  # var a conv's kernel call is bound to -> its record
        self.made: LayerRecord | None = None  # the record of the call being visited

    def visit_var_binding_(self, binding):
        self.made = None
        super().visit_var_binding_(binding)
        if self.made is not None:
            self.layer_of[self.get_var_remap(binding.var)] = self.made

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
        if cw.nbytes >= w.nbytes:  # nothing to gain: the FP32 weight is the smaller form
            record.reason = (f"its {cw.bits}-bit codebook form ({cw.nbytes} bytes) is not "
                             f"smaller than its FP32 weight ({w.nbytes} bytes)")
            return None
        record.bits, record.sparsity = cw.bits, cw.sparsity()
        record.codebook_entries = int(np.unique(cw.indices()).size)
        record.scaled = cw.scale is not None
        record.packed_bytes = cw.nbytes
        need = max(1, int(np.ceil(np.log2(record.codebook_entries))))
        if need < cw.bits:  # no layout of that width: the next wider one holds it
            record.widened = (f"its {record.codebook_entries} codebook entries need {need} "
                              f"bits, packed at {cw.bits}")
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
        """Name the layer's kernel in its record: ``spec``'s (or the name itself), its FP32
        kernel where the layer is no codebook."""
        name = spec if isinstance(spec, str) else spec.name
        if cw is None:
            rec.fp32_kernel = name
        else:
            rec.kernel = name

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if call.op == OP["relax.nn.conv2d"]:
            return self._conv2d(call)
        if call.op == OP["relax.matmul"]:
            return self._matmul(call)
        if call.op in UNSUPPORTED and (w := self._weight(call.args[1])) is not None:
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
        xshape = static_shape(x)
        if (a.data_layout, a.kernel_layout, a.out_layout) != ("NCHW", "OIHW", "NCHW"):
            rec.reason = f"layout {a.data_layout}/{a.kernel_layout} (only NCHW/OIHW)"
            return call
        if xshape is None or value.dtype != np.float32:
            rec.reason = "input or weight is not a static-shape float32 tensor"
            return call
        if not float32_out(a.out_dtype):
            rec.reason = f"out_dtype {a.out_dtype}"
            return call
        # the layer's geometry, read from its attributes once (bits, scale and a zero-skipped
        # input's channels are set on it below)
        shape = kconv.Conv2dSpec(
            *xshape, value.shape[0], tuple(value.shape[2:]),
            stride=tuple(int(v) for v in a.strides), padding=tuple(int(v) for v in a.padding),
            dilation=tuple(int(v) for v in a.dilation), groups=int(a.groups))
        rec.macs = shape.macs
        cw = self._weight_form(name, value, rec)
        if cw is False:
            return call
        bits = FP32_WEIGHT if cw is None else cw.bits
        if whole_input(a, xshape, value.shape):
            return self._conv_as_dense(x, cw, value, dataclasses.replace(shape, bits=bits), rec)
        if shape.groups == 1:
            n_, c_, h_, w_ = xshape
            o_, _, kh, kw = value.shape
            out_px = int(np.prod(shape.out_shape[2:]))
            x, cw, value = skip_zero_inputs(
                self, x, cw, value, rec,
                lambda d: (n_ * d * o_ * kh * kw * out_px, n_ * (c_ - d) * h_ * w_))
        spec = dataclasses.replace(shape, in_channels=value.shape[1] * shape.groups, bits=bits,
                                   scaled=cw is not None and cw.scale is not None)
        self._note(rec, cw, spec)
        out_ty = relax.TensorType(spec.out_shape, "float32")
        if cw is not None:
            rec.strategy = "exact"
        if self.policy.strategy == "lut" and cw is not None:
            rec.reason = "exact: no lut conv2d kernel (lut covers batch-1 dense layers)"
        chosen = self.policy.layer_strategy.get(rec.name)
        family, why = self._choose(spec, chosen)
        if why and cw is not None and self._int8:  # the int8 conv could not take it
            rec.reason = f"exact: {why}"
            padded = self._padded_outputs(x, cw, value, spec, rec, chosen)
            if padded is not None:
                return padded
        out = self._lower(family, x, cw, value, spec, rec, out_ty)
        if chosen is not None and cw is not None:
            rec.reason = f"{chosen}: chosen by measurement"
        return out

    def _lower(self, family, x, cw, value, spec, rec, out_ty):
        """The conv ``spec`` on the kernel ``family``."""
        if family == kdw.FAMILY:
            return self._depthwise(x, cw, value, spec, rec, out_ty)
        if family in INT8_DW:
            return self._int8_depthwise(x, cw, value, spec, rec, out_ty, INT8_DW[family])
        if family == kgathered.FAMILY:
            return self._int8_im2col(x, cw, value, spec, rec, out_ty)
        if family == klut.FAMILY:
            return self._int8_lut(x, cw, spec, rec, out_ty)
        if family != kconv.FAMILY:
            return self._int8_conv2d(x, cw, value, spec, rec, out_ty, family)
        gv = self._kernel(kconv.compute, spec)
        return relax.call_tir(gv, self._operands(x, cw, value), out_ty=out_ty)

    def _padded_outputs(self, x, cw, value, spec, rec, chosen):
        """A conv whose output channels no int8 conv takes (ShuffleNetV2's 58: the convs take
        whole blocks of 4 or 8) done as one with zero weights up to the block (index 0 is
        exactly zero), its extra channels sliced off; None where that does not help."""
        o = spec.out_channels
        if spec.groups != 1:
            return None
        for block in (4, 8):
            wide = dataclasses.replace(spec, out_channels=-(-o // block) * block)
            family, why = self._choose(wide, chosen)
            if not why and family not in (kconv.FAMILY, kdw.FAMILY):
                break
        else:
            return None
        pad = wide.out_channels - o
        value = np.pad(value, [(0, pad)] + [(0, 0)] * (value.ndim - 1))
        cw = dataclasses.replace(
            cw, shape=(wide.out_channels, *cw.shape[1:]),
            packed=np.pad(cw.packed, ((0, pad), (0, 0))),
            scale=None if cw.scale is None else np.pad(
                cw.scale, (0, pad), constant_values=1).astype(np.float32))
        conv = self.builder_.emit(self._lower(family, x, cw, value, wide, rec, relax.TensorType(
            wide.out_shape, "float32")))
        rec.reason = f"{o} output channels computed as {wide.out_channels} (zero weights)"
        self.made = None  # (the slice is no conv: no epilogue is fused after it)
        return relax.op.strided_slice(conv, axes=[1], begin=[0], end=[o])

    def _choose(self, spec, chosen: str | None = None) -> tuple[str, str]:
        """(the family of the first candidate of the strategy (``chosen``, where the layer's
        was chosen by measurement) that takes ``spec`` on the build's core, the reason the
        first candidate gave when it is not that one): the candidates are data
        (:data:`dgms_tvm.strategies.CONV2D`), what takes a layer is each family's
        ``supports``; the reason is the core's int8 conv's where it refused (not that of a
        form for some layers only, as the lookup-table conv). The FP32 build's convs are
        exact whatever the strategy."""
        strategy = (chosen or self.policy.strategy) if self.policy.codebooks else "exact"
        # the core's int8 conv, whose reason a record keeps
        main = strategies.for_core(strategies.INT8_CONV, self.policy.profile)
        first = ""
        for family in strategies.conv2d_candidates(strategy, self.policy.profile):
            why = FAMILIES[family].supports(spec, self.policy.profile)
            if not why:
                return family, first
            first = why if family == main else first or why
        raise AssertionError(f"no kernel takes {spec.name}")  # cb_conv2d takes any conv

    def _depthwise(self, x, cw, value, spec, rec, out_ty):
        """A depthwise conv (any strategy, FP32 arithmetic: see kernels.fp32.depthwise), with
        ``M`` (the layer's scale) and ``B`` (zero) for the epilogue pass to fold the BatchNorm
        / bias after it into."""
        o = spec.out_channels
        dspec = kdw.DepthwiseSpec(spec)
        self._note(rec, cw, dspec)
        self.made = rec
        gv = self._kernel(kdw.compute, dspec)
        if cw is None:
            consts = [np.asarray(value, np.float32).reshape(o, -1)]
        else:
            m = np.ones(o) if cw.scale is None else np.asarray(cw.scale, np.float64)
            consts = [cw.packed, cw.codebook, m.astype(np.float32)]
        consts.append(np.zeros(o, np.float32))
        return relax.call_tir(gv, [x, *(relax.const(np.ascontiguousarray(c)) for c in consts)],
                              out_ty=out_ty)


def whole_input(attrs, xshape, wshape) -> bool:
    """Whether a conv's window is its whole input, once (groups 1, no padding): a dense
    layer over the flattened input."""
    return (int(attrs.groups) == 1 and tuple(xshape[2:]) == tuple(wshape[2:])
            and not any(int(v) for v in attrs.padding))


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
        try:
            for gv, func in mod.functions_items():
                if isinstance(func, relax.Function):
                    rw.builder_.update_func(gv, rw.visit_expr(func))
            mod = rw.builder_.finalize()
            if policy.epilogues:
                return fuse_epilogues(policy.weights, rw.layer_of)(mod)
            return relax.transform.DeadCodeElimination()(mod)
        except (KeyboardInterrupt, RuntimeError) as err:
            if not isinstance(err, KeyboardInterrupt) and interrupt.received() is None:
                raise
        # Interrupted mid-rewrite (TVM may have turned it into a RuntimeError). The rewriter
        # lives until exit (it and its C++ half refer to each other), when its BlockBuilder
        # would warn of the blocks left open, after the CLI's "interrupted": close them.
        for _ in range(64):
            try:
                rw.builder_._end_block()
            except Exception:  # none open
                break
        raise KeyboardInterrupt

    return transform
