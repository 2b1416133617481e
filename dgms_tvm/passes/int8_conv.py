"""Lowering of a codebook conv2d under the int8 strategy: the input's quantize, the weight's
decode and the int8 conv (:mod:`dgms_tvm.kernels.int8`, or the widening conv of
:mod:`dgms_tvm.kernels.int8_long` on aarch64 cores without ``sdot``), with its epilogue."""

from __future__ import annotations

import numpy as np
from tvm import relax

from .. import strategies
from ..kernels import int8 as kint8
from ..kernels import int8_decode as kdecode
from ..kernels import int8_long as klong
from ..kernels import int8_quant as kquant
from ..kernels.epilogue import Epilogue


class Int8ConvLowering:
    """Mixin of the rewriter (:mod:`.lower_codebook`)."""

    def _int8_conv2d(self, x, cw, value, spec, rec, out_ty, family):
        """Quantize the input, decode the weight (kernels of their own where they can), then the
        int8 conv ``family`` (the core's: see kernels.int8 and kernels.int8_long). A
        layer that is no codebook (``cw`` None: the stem) gets its float32 weight
        quantized per output channel, tiled in the conv's order at compile time. With an
        epilogue (the BatchNorm, add, relu after it) the three calls are made where that
        chain ends, so that a layer's kernels stay together in ``main``."""
        rec.strategy = "int8"
        # the widening kernel (cores without sdot) reads 16 input channels at a time
        depth = klong.DEPTH if family == klong.FAMILY else 4
        limit = self._long(spec).limit if depth == 16 else 127  # its weights' range
        ds = kdecode.DecodeSpec.of(spec, depth)
        unsigned = kint8.unsigned_input(self.policy.profile)
        predecoded = cw is None or ds.supported()
        if cw is None:
            wq, d = kquant.quantize_weight(value, limit)
            consts = [relax.const(kdecode.conv_order(ds, wq), "int8")]
        else:
            qcb, d = kquant.quantize_codebook(cw.codebook, cw.scale, spec.out_channels, limit)
            idx = cw.indices()
            consts = ([relax.const(kdecode.pack_for_decode(ds, idx), "uint8"),
                       relax.const(kquant.q16(qcb), "int8")] if predecoded else
                      [relax.const(cw.packed, "uint8"), relax.const(qcb, "int8")])
        corr = [relax.const(kquant.weight_correction(wq) if cw is None else
                            kquant.correction(idx, qcb), "int32")] if unsigned else []
        qs = kquant.QuantSpec.of(spec, unsigned, depth)

        def operands():
            """Emit the input's quantize (and the weight's decode) call: the conv's first
            operands."""
            if qs.name not in self.kernels:
                self.kernels[qs.name] = self.builder_.add_func(kquant.compute(qs),
                                                               qs.name)
            q = self.builder_.emit(relax.call_tir(self.kernels[qs.name], [x], out_ty=[
                relax.TensorType(qs.out_shape, qs.dtype), relax.TensorType((1,), "float32")]))
            xq, sx = relax.TupleGetItem(q, 0), relax.TupleGetItem(q, 1)
            if cw is None or not predecoded:  # tiled already, or decoded inside the conv
                return [xq, sx, *consts]
            if ds.name not in self.kernels:  # weights decoded 16 at a time by a kernel
                self.kernels[ds.name] = self.builder_.add_func(kdecode.compute(ds),
                                                               ds.name)
            w = self.builder_.emit(relax.call_tir(self.kernels[ds.name], [*consts, sx],
                                                  out_ty=relax.TensorType(ds.shape, "int8")))
            return [xq, sx, w]

        def kernel_name(ep):
            return (self._long(spec, ep).name if depth == 16 else
                    kint8.name(spec, predecoded=predecoded, unsigned=unsigned, epilogue=ep))

        chain = self._epilogue(self.current, spec) if self.policy.epilogues else None
        ep = chain[1] if chain is not None else Epilogue()
        kname = kernel_name(ep)
        if cw is None:
            rec.fp32_kernel = kname
        else:
            rec.kernel = kname
        if chain is not None:
            end, ep, scale, shift, res, steps = chain
            rec.epilogue = "+".join(steps)
            fused = self._int8_kernel(spec, predecoded, unsigned, ep, kname, depth)
            tail = [relax.const((d * scale).astype(np.float32), "float32"), *corr]
            if ep.bias:
                tail.append(relax.const(shift.astype(np.float32), "float32"))

            def make():
                extra = [self.visit_expr(res)] if res is not None else []
                return relax.call_tir(fused, [*operands(), *tail, *extra], out_ty=out_ty)

            self.deferred[end] = make
        # The call bound here; with an epilogue it and the ops after it up to the chain's end
        # are dead (removed below), their result coming from the call made there.
        gv = self._int8_kernel(spec, predecoded, unsigned, Epilogue(),
                               kernel_name(Epilogue()), depth)
        return relax.call_tir(gv, [*operands(), relax.const(d, "float32"), *corr],
                              out_ty=out_ty)

    @property
    def _int8(self) -> bool:
        return strategies.is_int8(self.policy.strategy)

    def _long(self, spec, ep=None):
        """The widening kernel's spec: 7-bit weights, or 8-bit ones for ``int8-full``."""
        return klong.LongSpec(spec, ep or Epilogue(), limit=(
            127 if self.policy.strategy == "int8-full" else klong.WEIGHT_LIMIT))

    def _int8_kernel(self, spec, predecoded, unsigned, ep, kname, depth=4):
        if kname not in self.kernels:
            self.kernels[kname] = self.builder_.add_func(
                klong.compute(self._long(spec, ep)) if depth == 16 else
                kint8.compute(spec, predecoded=predecoded, unsigned=unsigned, epilogue=ep),
                kname)
        return self.kernels[kname]
