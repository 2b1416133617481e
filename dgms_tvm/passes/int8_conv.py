"""Lowering of a codebook conv2d under the int8 strategy: the input's quantize, the weight's
decode and the int8 conv (:mod:`dgms_tvm.kernels.int8.sdot`, or the widening conv of
:mod:`dgms_tvm.kernels.int8.widening` on aarch64 cores without ``sdot``, with its taps
gathered by :mod:`dgms_tvm.kernels.int8.gathered` where the input has few channels), or the
int8 depthwise conv (:mod:`dgms_tvm.kernels.int8.depthwise`,
:mod:`dgms_tvm.kernels.int8.depthwise_rows`)."""

from __future__ import annotations

from tvm import relax

from .. import strategies
from ..kernels.int8 import gathered as kgathered
from ..kernels.int8 import lut as klut
from ..kernels.int8 import sdot as ksdot
from ..kernels.int8 import smmla as ksmmla
from ..kernels.int8 import widening as kwidening
from ..kernels.int8.operands import decode as kdecode
from ..kernels.int8.operands import quantize as kquant
from ..kernels.int8.operands import weights as kweights
from ..schedules import load_knobs


class Int8ConvLowering:
    """Mixin of the rewriter (:mod:`.lower_codebook`)."""

    def _int8_conv2d(self, x, cw, value, spec, rec, out_ty, family):
        """Quantize the input, decode the weight (kernels of their own where they can, or once
        at compile time where the core keeps int8 weights: strategies.KEEP_INT8_WEIGHTS),
        then the int8 conv ``family`` (the core's: see kernels.int8.sdot and
        kernels.int8.widening). A layer that is no codebook (``cw`` None: the stem) gets its
        float32 weight quantized per output channel, tiled in the conv's order at compile
        time. The ops
        after it (BatchNorm, add, relu) are the epilogue pass's (:mod:`.epilogue`)."""
        rec.strategy, rec.reason = "int8", ""
        if family == kwidening.FAMILY and cw is not None and spec.bits in (1, 2) and \
                klut.FAMILY in strategies.conv2d_candidates(self.policy.strategy,
                                                            self.policy.profile):
            rec.reason = f"widening int8 conv: {klut.supports(spec)}"  # why not the tables
        depth = self._depth(family)
        dot = ksmmla if family == ksmmla.FAMILY else ksdot
        limit = self._long(spec).limit if depth == 16 else 127  # its weights' range
        ds = kdecode.DecodeSpec.of(spec, depth)
        unsigned = ksdot.unsigned_input(self.policy.profile)
        predecoded = cw is None or ds.supported()
        kept = cw is not None and strategies.for_core(strategies.KEEP_INT8_WEIGHTS,
                                                      self.policy.profile)
        if cw is None:
            wq, d = kweights.quantize_weight(value, limit)
            consts = [relax.const(kdecode.conv_order(ds, wq), "int8")]
        else:
            idx = cw.indices()
            qcb, d = kweights.quantize_codebook(cw.codebook, cw.scale, spec.out_channels, limit,
                                                indices=idx)
            if kept:  # decoded once, here, into the order the conv reads
                predecoded = True
                consts = [relax.const(kdecode.conv_order(ds, qcb[idx]), "int8")]
            else:
                consts = ([relax.const(kdecode.pack_for_decode(ds, idx), "uint8"),
                           relax.const(kweights.q16(qcb), "int8")] if predecoded else
                          [relax.const(cw.packed, "uint8"), relax.const(qcb, "int8")])
        corr = [relax.const(kweights.weight_correction(wq) if cw is None else
                            kweights.correction(idx, qcb), "int32")] if unsigned else []
        qs = kquant.QuantSpec.of(spec, unsigned, depth)

        xq, sx = self._quantize(x, qs)
        if cw is None or kept or not predecoded:  # tiled already, or decoded inside the conv
            operands = [xq, sx, *consts]
        else:  # weights decoded 16 at a time by a kernel
            operands = [xq, sx, self.builder_.emit(relax.call_tir(
                self._kernel(kdecode.compute, ds), [*consts, sx],
                out_ty=relax.TensorType(ds.shape, "int8")))]
        if depth == 16:
            self._note(rec, cw, self._long(spec))
            gv = self._kernel(kwidening.compute, self._long(spec))
        else:
            gv = self._dot_kernel(dot, spec, rec, cw, predecoded, unsigned)
        self.made = rec  # the epilogue pass fuses the ops after it
        return relax.call_tir(gv, [*operands, relax.const(d, "float32"), *corr],
                              out_ty=out_ty)

    def _int8_im2col(self, x, cw, value, spec, rec, out_ty):
        """A conv of few input channels on the core's int8 conv (the widening kernel, or the
        smmla conv): the input quantized (4 channels innermost), its window's taps gathered
        into the channels of a 1x1 conv (:mod:`dgms_tvm.kernels.int8.gathered`), the weight
        laid out in the same order at compile time (per output channel for a layer that is
        no codebook, the stem)."""
        rec.strategy, rec.reason = "int8", ""
        mmla = strategies.for_core(strategies.INT8_CONV, self.policy.profile) == ksmmla.FAMILY
        ispec = kgathered.Im2colSpec(spec, ksmmla.DEPTH if mmla else kwidening.DEPTH)
        lspec = None if mmla else self._long(ispec.pointwise)
        wq, d = self._int8_weight(cw, value, spec, 127 if mmla else lspec.limit)
        ds = kdecode.DecodeSpec.of(ispec.pointwise, ispec.depth)
        w = kdecode.conv_order(ds, kgathered.columns(ispec, wq))
        xq, sx = self._quantize(x, ispec.inp)
        cols = self.builder_.emit(relax.call_tir(
            self._kernel(kgathered.compute, ispec), [xq],
            out_ty=relax.TensorType(ispec.out.out_shape, "int8")))
        self.made = rec
        if mmla:  # (its weight int8, laid out here)
            gv = self._dot_kernel(ksmmla, ispec.pointwise, rec, cw)
        else:
            self._note(rec, cw, lspec)
            gv = self._kernel(kwidening.compute, lspec)
        return relax.call_tir(gv, [cols, sx, relax.const(w, "int8"), relax.const(d, "float32")],
                              out_ty=out_ty)

    def _int8_lut(self, x, cw, spec, rec, out_ty):
        """A 1- or 2-bit codebook conv on the lookup-table kernel
        (:mod:`dgms_tvm.kernels.int8.lut`): the input quantized as for the widening conv
        (so int8 between layers reaches it), the indices packed into table indices and the
        codebook's int8 entries into the tables' operand at compile time."""
        rec.strategy, rec.reason = "int8", ""
        lspec = klut.LutSpec.of(spec, self._lut_tile())
        idx = cw.indices()
        qcb, d = kweights.quantize_codebook(cw.codebook, cw.scale, spec.out_channels,
                                            klut.limit(spec.bits), indices=idx)
        xq, sx = self._quantize(x, lspec.quant)
        self._note(rec, cw, lspec)
        self.made = rec
        consts = [relax.const(klut.pack(lspec, idx), "uint8"),
                  relax.const(klut.entries(lspec, qcb), "int8"),
                  relax.const((d * 2.0 ** klut.SHIFT).astype("float32"), "float32")]
        return relax.call_tir(self._kernel(klut.compute, lspec), [xq, sx, *consts],
                              out_ty=out_ty)

    def _lut_tile(self):
        """The lookup-table conv's register tile on this core (``schedules/<core>.json``,
        read once per lowering): the weight's layout follows it."""
        if not hasattr(self, "_tile"):
            self._tile = load_knobs(self.policy.profile)[klut.FAMILY].get("tile")
        return self._tile

    @staticmethod
    def _int8_weight(cw, value, spec, limit: int = 127):
        """(int8 weight ``[O, C, kh, kw]``, per-channel ``D``): the codebook's int8 entries
        (``cw``), or the float32 weight ``value`` per output channel where ``cw`` is None."""
        if cw is None:
            return kweights.quantize_weight(value, limit)
        idx = cw.indices()
        qcb, d = kweights.quantize_codebook(cw.codebook, cw.scale, spec.out_channels, limit,
                                            indices=idx)
        return qcb[idx], d

    def _quantize(self, x, qs):
        """(Xq, s_x): ``x`` quantized at run time into ``qs``'s layout (a producer that can
        writes it so itself instead: :mod:`.int8_chain`)."""
        q = self.builder_.emit(relax.call_tir(self._kernel(kquant.compute, qs), [x], out_ty=[
            relax.TensorType(qs.out_shape, qs.dtype), relax.TensorType((1,), "float32")]))
        return relax.TupleGetItem(q, 0), relax.TupleGetItem(q, 1)

    def _int8_depthwise(self, x, cw, value, spec, rec, out_ty, module):
        """The int8 depthwise conv of ``module`` (a family's: its ``lowered`` makes the
        spec and the constant operands): its input quantized, its weight as int8 (the
        codebook's entries, or a float32 weight per channel) laid out at compile time; ``D``
        and a zero ``B`` for the epilogue pass to fold the BatchNorm / bias after it into."""
        rec.strategy, rec.reason = "int8", ""
        # the channel groups of the core's int8 conv, which writes its input and reads its
        # output (aarch64)
        conv = strategies.for_core(strategies.INT8_CONV, self.policy.profile)
        wq, d = self._int8_weight(cw, value, spec)
        dspec, consts = module.lowered(spec, wq, d, self._depth(conv))
        self._note(rec, cw, dspec)
        self.made = rec
        xq, sx = self._quantize(x, dspec.inp)
        return relax.call_tir(self._kernel(module.compute, dspec),
                              [xq, sx, *(relax.const(c) for c in consts)], out_ty=out_ty)

    def _dot_kernel(self, module, spec, rec, cw, predecoded=True, unsigned=False):
        """The sdot or smmla conv (``module``: kernels.int8.sdot, kernels.int8.smmla) of ``spec``,
        made once per name, and named in ``rec``."""
        kname = module.name(spec, predecoded=predecoded, unsigned=unsigned)
        if kname not in self.kernels:
            self.kernels[kname] = self.builder_.add_func(
                module.compute(spec, predecoded=predecoded, unsigned=unsigned), kname)
        self._note(rec, cw, kname)
        return self.kernels[kname]

    @staticmethod
    def _depth(family: str) -> int:
        """The input channels per group of the int8 conv ``family``: the widening kernel
        (cores without sdot) reads 16 at a time, the smmla conv 8, the sdot conv 4."""
        return {kwidening.FAMILY: kwidening.DEPTH, ksmmla.FAMILY: ksmmla.DEPTH}.get(family, 4)

    @property
    def _int8(self) -> bool:
        return strategies.is_int8(self.policy.strategy)

    def _long(self, spec):
        """The widening kernel's spec: 7-bit weights, or 8-bit ones for ``int8-full``."""
        return kwidening.LongSpec(spec, limit=(
            127 if self.policy.strategy == "int8-full" else kwidening.WEIGHT_LIMIT))
