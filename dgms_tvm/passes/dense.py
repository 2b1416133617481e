"""Lowering of a dense layer (``matmul`` with a constant weight): a batch-1 layer to the
first GEMV kernel of its strategy's candidates that the core runs
(:data:`dgms_tvm.strategies.GEMV`), any other to the generic dense kernel."""

from __future__ import annotations

import dataclasses

import numpy as np
from tvm import relax

from .. import strategies
from ..kernels import gemv as kgemv
from ..kernels.common import FP32_WEIGHT
from ..kernels.conv import Conv2dSpec
from ..kernels.fp32 import conv2d as kconv
from ..kernels.fp32 import dense as kdense
from ..kernels.fp32 import depthwise as kdw
from .ops import OP, float32_out, static_shape
from .records import LayerRecord
from .zero_skip import skip_zero_inputs


class DenseLowering:
    """Mixin of the rewriter (:mod:`.lower_codebook`)."""

    def _matmul(self, call):
        x, wexpr = call.args
        if isinstance(wexpr, relax.Var) and isinstance(self.lookup_binding(wexpr), relax.Call):
            wexpr = self.lookup_binding(wexpr)
        if isinstance(wexpr, relax.Call) and wexpr.op == OP["relax.permute_dims"]:
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
        xshape = static_shape(x)
        if value.ndim != 2 or xshape is None or value.dtype != np.float32 or not xshape:
            rec.reason = "not a 2-D float32 weight with a static float32 input"
            return call
        if not float32_out(call.attrs.out_dtype):
            rec.reason = f"out_dtype {call.attrs.out_dtype}"
            return call
        m = int(np.prod(xshape[:-1]))
        rec.macs = m * int(np.prod(value.shape))
        cw = self._weight_form(name, value, rec)
        if cw is False:
            return call
        if len(xshape) == 2:
            x, cw, value = skip_zero_inputs(
                self, x, cw, value, rec,
                lambda d: (m * d * value.shape[0], m * (value.shape[1] - d)))
        n, k = value.shape
        x2 = x if len(xshape) == 2 else self.builder_.emit(relax.op.reshape(x, (m, k)))
        y = self._dense(x2, m, n, k, cw, value, rec)
        if len(xshape) == 2:
            return y
        return relax.op.reshape(self.builder_.emit(y), (*xshape[:-1], n))

    def _dense(self, x2, m, n, k, cw, value, rec):
        """``x2 [m, k]`` times the layer's weight ``[n, k]`` (``value``, or its codebook
        ``cw``): a GEMV kernel at batch 1 where the core runs one, else the generic dense
        kernel."""
        out_ty = relax.TensorType((m, n), "float32")
        y = self._gemv(x2, m, n, k, cw, value, rec, out_ty)
        if y is None and m > 1 and cw is not None and self._int8:
            y = self._as_pointwise(x2, m, n, k, cw, value, rec)
        if y is None:
            spec = kdense.DenseSpec(m, n, k, bits=FP32_WEIGHT if cw is None else cw.bits,
                                    scaled=cw is not None and cw.scale is not None)
            self._note(rec, cw, spec)
            if cw is not None:
                rec.strategy = "exact"
            y = relax.call_tir(self._kernel(kdense.compute, spec),
                               self._operands(x2, cw, value), out_ty=out_ty)
        return y

    def _as_pointwise(self, x2, m, n, k, cw, value, rec):
        """A codebook Linear over ``m`` rows (a ConvNeXt block's MLP, a transformer's
        projections) as the 1x1 conv it is, on the core's int8 conv: ``x2`` seen as ``[1, k,
        1, m]`` (channels first), the output ``[1, n, 1, m]`` back to ``[m, n]``. None where
        no int8 conv takes it (the generic dense kernel then)."""
        spec = Conv2dSpec(1, k, 1, m, n, (1, 1), bits=cw.bits, scaled=cw.scale is not None)
        family, why = self._choose(spec)
        if family in (kconv.FAMILY, kdw.FAMILY):
            rec.reason = f"exact: {why}"
            return None
        xc = self.builder_.emit(relax.op.permute_dims(
            relax.op.reshape(x2, (1, 1, m, k)), [0, 3, 1, 2]))
        cw4 = dataclasses.replace(cw, shape=(n, k, 1, 1))
        y = self.builder_.emit(self._lower(family, xc, cw4, value.reshape(n, k, 1, 1), spec,
                                           rec, relax.TensorType(spec.out_shape, "float32")))
        rec.reason = f"{rec.reason or 'int8'}: a 1x1 conv over its {m} rows"
        return relax.op.reshape(relax.op.permute_dims(y, [0, 2, 3, 1]), (m, n))

    def _conv_as_dense(self, x, cw, value, spec, rec):
        """A conv whose window is its whole input (a squeeze-excite block's 1x1 convs on a
        1x1 map): ``reshape(x, [N, C*kh*kw])`` times the weight ``[O, C*kh*kw]``, a GEMV at
        batch 1, reshaped back to ``[N, O, 1, 1]``."""
        m, n, k = spec.batch, spec.out_channels, spec.reduction
        if cw is not None:
            cw = dataclasses.replace(cw, shape=(n, k))
        x2 = self.builder_.emit(relax.op.reshape(x, (m, k)))
        y = self._dense(x2, m, n, k, cw, value.reshape(n, k), rec)
        return relax.op.reshape(self.builder_.emit(y), spec.out_shape)

    def _gemv(self, x2, m, n, k, cw, value, rec, out_ty):
        """A batch-1 dense as a GEMV kernel (:mod:`..kernels.gemv`) where the target has its
        instructions; None to use the generic dense kernel. A codebook layer takes the first
        of its strategy's candidates (:data:`..strategies.GEMV`) that the target runs."""
        profile = self.policy.profile
        if profile is None or m != 1:
            return None
        choices = strategies.gemv_candidates(self.policy.strategy, cw is not None)
        for arith, form in choices:
            spec = kgemv.GemvSpec(1, n, k, FP32_WEIGHT if cw is None else cw.bits,
                                  arith=arith, rows=kgemv.rows_for(n, arith, form),
                                  form=form)
            if not kgemv.supports(spec, profile):
                break
        else:
            return None
        if arith == "fp32":
            consts = [np.ascontiguousarray(value)]
        else:
            consts = kgemv.operands(spec, cw.indices(), cw.codebook, cw.scale)
        self._note(rec, cw, spec)
        if cw is not None:
            rec.strategy = arith
        return relax.call_tir(self._kernel(kgemv.compute, spec),
                              [x2, *(relax.const(c) for c in consts)], out_ty=out_ty)
