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

from .. import interrupt, strategies
from ..detect import NotACodebook, find_codebook
from ..format import CodebookWeight
from ..kernels import conv2d as kconv
from ..kernels import dense as kdense
from ..kernels import depthwise as kdw
from ..kernels import gemv as kgemv
from ..kernels import int8 as kint8
from ..kernels import int8_decode as kdecode
from ..kernels import int8_long as klong
from ..kernels import int8_quant as kquant
from ..kernels.common import FP32_WEIGHT
from ..kernels.epilogue import Epilogue
from .records import LayerRecord, LoweringPolicy

_OP = {n: tvm.ir.Op.get(n) for n in ("relax.nn.conv2d", "relax.matmul", "relax.permute_dims",
                                      "relax.nn.batch_norm", "relax.add", "relax.nn.relu",
                                      "relax.clip", "relax.reshape")}
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


def _uses(func):
    """(var -> [(binding var, value) of each binding that reads it], var -> bound value) over
    ``func``'s bindings; the function's result counts as a reader (with var None)."""
    users, bound = {}, {}

    def reads(expr):
        found = []
        relax.analysis.post_order_visit(
            expr, lambda e: found.append(e) if isinstance(e, relax.Var) else None)
        return found

    body = func.body
    for block in body.blocks:
        for b in block.bindings:
            value = getattr(b, "value", None)
            if value is None:
                continue
            bound[b.var] = value
            for v in {id(x): x for x in reads(value)}.values():
                users.setdefault(v, []).append((b.var, value))
    for v in reads(body.body):
        users.setdefault(v, []).append((None, body.body))
    return users, bound


def _clip_bounds(call) -> tuple[float, float] | None:
    try:
        return tuple(float(v.value) for v in call.args[1:3])
    except (AttributeError, TypeError, ValueError):
        return None


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod, policy: LoweringPolicy, records: list[LayerRecord]):
        super().__init__(mod)
        self.policy, self.records, self.kernels = policy, records, {}
        self.n_const = 0
        self.users: dict = {}  # var -> [(binding var, value)] of the function being rewritten
        self.bound: dict = {}  # var -> its value in that function (bindings not visited yet)
        self.current = None  # the var the call being visited is bound to
        self.deferred: dict = {}  # var -> builds the fused call to bind to it instead
        self.claimed: set = set()  # vars of ops some conv's epilogue does

    def rewrite(self, func):
        self.users, self.bound = _uses(func)
        return self.visit_expr(func)

    def visit_var_binding_(self, binding):
        make = self.deferred.pop(binding.var, None)
        if make is not None:  # the end of a fused epilogue: the conv with it, here
            self.set_var_remap(binding.var, self.builder_.emit(make(), binding.var.name))
            return
        self.current = binding.var
        super().visit_var_binding_(binding)

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

    def _skip_zero_inputs(self, x, cw, value, rec, cost):
        """Zero skipping at channel level: the input channels (conv2d) or features (dense)
        whose weights are all exactly zero (DGMS's pinned component, in every output channel
        and window position) are dropped at compile time and the layer's input gathered down
        to the rest (one ``take``). Stated cost model: it pays where the multiply-adds it
        removes outnumber the input values the ``take`` copies; ``cost(n)`` gives both for
        ``n`` dropped. Returns ``(x, cw, value)``, unchanged where nothing is dropped."""
        if cw is None or not self.policy.zero_skip:
            return x, cw, value
        w = cw.dense()
        zero = ~w.reshape(w.shape[0], w.shape[1], -1).any(axis=(0, 2))
        n = int(zero.sum())
        if n == 0 or n == zero.size:
            return x, cw, value
        saved, copied = cost(n)
        if saved <= copied:
            rec.reason = (f"{n} all-zero input channels kept: dropping them saves {saved} "
                          f"multiply-adds, copying the rest costs {copied}")
            return x, cw, value
        keep = np.flatnonzero(~zero)
        axis = 1 if w.ndim == 4 else -1
        x = self.builder_.emit(relax.op.take(x, relax.const(keep.astype(np.int64)), axis=axis))
        cw = CodebookWeight.from_indices(cw.indices().take(keep, axis=1), cw.codebook, cw.bits,
                                         scale=cw.scale)
        rec.zero_inputs, rec.packed_bytes = n, cw.nbytes
        return x, cw, np.ascontiguousarray(value.take(keep, axis=1))

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
        if int(a.groups) == 1:
            n_, c_, h_, w_ = xshape
            o_, _, kh, kw = value.shape
            out_px = int(np.prod(kconv.Conv2dSpec(
                *xshape, o_, (kh, kw), stride=tuple(int(v) for v in a.strides),
                padding=tuple(int(v) for v in a.padding),
                dilation=tuple(int(v) for v in a.dilation)).out_shape[2:]))
            x, cw, value = self._skip_zero_inputs(
                x, cw, value, rec,
                lambda d: (n_ * d * o_ * kh * kw * out_px, n_ * (c_ - d) * h_ * w_))
            xshape = (n_, value.shape[1], h_, w_)
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
        if self.policy.strategy == "lut" and cw is not None:
            rec.reason = "exact: no lut conv2d kernel (lut covers batch-1 dense layers)"
        if not kdw.supports(spec):
            if self._int8 and cw is not None:
                rec.reason = f"exact: {kint8.supports(spec)}"
            return self._depthwise(x, cw, value, spec, rec, out_ty)
        if self._int8 and self.policy.codebooks:
            why = kint8.supports(spec) or self._long_supports(spec, cw)
            if not why:
                return self._int8_conv2d(x, cw, value, spec, rec, out_ty)
            if cw is not None:
                rec.reason = f"exact: {why}"
        gv = self._kernel(kconv.compute, spec)
        return relax.call_tir(gv, self._operands(x, cw, value), out_ty=out_ty)

    def _int8_conv2d(self, x, cw, value, spec, rec, out_ty):
        """Quantize the input, decode the weight (kernels of their own where they can), then the
        int8 conv (see kernels.int8). A layer that is no codebook (``cw`` None: the stem) gets
        its float32 weight quantized per output channel, tiled in the conv's order at compile
        time. With an epilogue (the BatchNorm, add, relu after it) the three calls are made
        where that chain ends, so that a layer's kernels stay together in ``main``."""
        rec.strategy = "int8"
        # cores without sdot: the widening kernel, which reads 16 input channels at a time
        depth = 16 if klong.wanted(self.policy.profile) else 4
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

    def _depthwise(self, x, cw, value, spec, rec, out_ty):
        """A depthwise conv (any strategy, FP32 arithmetic: see kernels.depthwise) with the
        BatchNorm / bias and relu / relu6 after it as its epilogue: the fused call is made
        where that chain ends, as for the int8 conv."""
        chain = (self._epilogue(self.current, spec, residual=False)
                 if self.policy.epilogues else None)
        o = spec.out_channels

        def call(act, scale, shift):
            dspec = kdw.DepthwiseSpec(spec, act=act)
            self._note(rec, cw, dspec)
            gv = self._kernel(kdw.compute, dspec)
            if cw is None:
                w = (np.asarray(value, np.float64).reshape(o, -1) * scale[:, None])
                consts = [w.astype(np.float32)]
            else:
                m = (np.ones(o) if cw.scale is None else np.asarray(cw.scale, np.float64))
                consts = [cw.packed, cw.codebook, (m * scale).astype(np.float32)]
            consts.append(shift.astype(np.float32))
            return relax.call_tir(gv, [x, *(relax.const(np.ascontiguousarray(c))
                                            for c in consts)], out_ty=out_ty)

        if chain is not None:
            end, ep, scale, shift, _, steps = chain
            rec.epilogue = "+".join(steps)
            self.deferred[end] = lambda: call(ep.act, scale, shift)
        # the call bound here (dead with an epilogue: see _int8_conv2d)
        return call("", np.ones(o), np.zeros(o))

    @property
    def _int8(self) -> bool:
        return strategies.is_int8(self.policy.strategy)

    def _long(self, spec, ep=None):
        """The widening kernel's spec: 7-bit weights, or 8-bit ones for ``int8-full``."""
        return klong.LongSpec(spec, ep or Epilogue(), limit=(
            127 if self.policy.strategy == "int8-full" else klong.WEIGHT_LIMIT))

    def _long_supports(self, spec, cw) -> str:
        """On cores without sdot, why the widening int8 kernel cannot take ``spec`` (empty
        if it can): the generic int8 kernel is no match for FP32 arithmetic there (ResNet-18
        on cortex-a72: 2612 M instructions against 715 M), so such layers stay exact."""
        if not klong.wanted(self.policy.profile):
            return ""
        why = klong.supports(spec)
        if not why and cw is not None and not kdecode.DecodeSpec.of(spec, 16).supported():
            why = f"{spec.bits}-bit indices (the widening int8 conv decodes 1, 2 or 4 bits)"
        return why

    def _int8_kernel(self, spec, predecoded, unsigned, ep, kname, depth=4):
        if kname not in self.kernels:
            self.kernels[kname] = self.builder_.add_func(
                klong.compute(self._long(spec, ep)) if depth == 16 else
                kint8.compute(spec, predecoded=predecoded, unsigned=unsigned, epilogue=ep),
                kname)
        return self.kernels[kname]

    # -- epilogues -------------------------------------------------------------------------
    def _const(self, expr) -> np.ndarray | None:
        """The value of a constant operand (a weight, a constant, a reshape of one)."""
        w = self._weight(expr)
        if w is not None:
            return w[1]
        value = self.bound.get(expr) if isinstance(expr, relax.Var) else None
        if isinstance(value, relax.Call) and value.op == _OP["relax.reshape"]:
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
                    not value.args[0].same_as(cur) and value.op != _OP["relax.add"]):
                break
            if value.op == _OP["relax.nn.batch_norm"] and res is None:
                g_b = self._batch_norm(value, nxt, o)
                if g_b is None:
                    break
                (g, b), nxt = g_b
                scale, shift, bias = scale * g, shift * g + b, True
                steps.append("batch_norm")
            elif value.op == _OP["relax.add"]:
                a, b = value.args
                other = b if a.same_as(cur) else a
                if not (a.same_as(cur) or b.same_as(cur)) or other.same_as(cur):
                    break
                per = self._channel(other, o)
                if per is not None and res is None:
                    shift, bias = shift + per, True
                    steps.append("bias")
                elif residual and res is None and isinstance(other, relax.Var) and \
                        _static_shape(other) == tuple(spec.out_shape) and per is None:
                    res = other
                    steps.append("add")
                else:
                    break
            elif value.op == _OP["relax.nn.relu"]:
                act = "relu"
            elif value.op == _OP["relax.clip"] and _clip_bounds(value) == (0.0, 6.0):
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
        m = int(np.prod(xshape[:-1]))
        if len(xshape) == 2:
            x, cw, value = self._skip_zero_inputs(
                x, cw, value, rec, lambda d: (m * d * value.shape[0], m * (value.shape[1] - d)))
        n, k = value.shape
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
                    rw.builder_.update_func(gv, rw.rewrite(func))
            return relax.transform.DeadCodeElimination()(rw.builder_.finalize())
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
