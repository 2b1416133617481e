"""The int8 strategy of a codebook conv2d: compute, NumPy oracle and hand-written schedule.

Weights and activations reach it quantized (:mod:`.operands.quantize`; the weight decoded ahead
by :mod:`.operands.decode` where it can be, else from the same packed indices the exact kernel
reads).

Arithmetic: int8 x int8 products summed in int32 over ``(r, s, c)``, four channels by four
outputs at a time: one ``sdot`` per 16 products on cores with dotprod (a 4-pixel x
4-channel x 4-input tensor intrinsic, :mod:`..intrin`), the generic vectorised form elsewhere
(aarch64 cores without dotprod have a kernel of their own, :mod:`.widening`, on the same
quantized values in 16-channel groups: ``depth`` of :class:`QuantSpec` / :class:`DecodeSpec`);
then ``Y = float(acc) * s_x * D[o]``.

Only ``groups == 1`` layers with output channels in multiples of 4 take this strategy (the
pass keeps the others exact).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import tvm
from tvm import te

from ...format import row_bytes
from ..common import FP32_WEIGHT, KERNEL_ATTR, OPAQUE, SPEC_ATTR, decode_index, i64
from ..conv import Conv2dSpec
from ..conv import reference as conv_reference
from ..epilogue import Epilogue
from ..protocol import APPENDED_SHIFT, Fusion, Int8Out, KernelFamily
from . import vnni
from .operands.quantize import QuantSpec, layout, padded_out_w, quantize_fixed, quantize_input
from .sdot_schedule import (  # noqa: F401  (the schedule, re-exported)
    CHANNEL_MAJOR_BLOCKS,
    EPILOGUE_ATTR,
    OUT_ATTR,
    PREDECODED_ATTR,
    UNSIGNED_ATTR,
    apply,
    channel_major,
    quad,
    register_tile,
    schedule,
)

FAMILY = "q8_conv2d"
#: Input channels per group the conv reads (4: ``sdot``; 8: ``smmla``, :mod:`.smmla`).
DEPTHS = (4, 8)
#: Function attribute: the group depth where it is not 4.
DEPTH_ATTR = "dgms.depth"


def supports(spec: Conv2dSpec, profile=None, depth: int = 4) -> str:
    """Empty when the int8 conv can take ``spec`` (on any core) reading its input in groups
    of ``depth`` channels, else why not: output channels in 4s; a grouped conv's groups in
    whole blocks of ``depth`` input and 4 output channels (ResNeXt's 32 groups of 4, RegNet's
    group widths of 8 and more), not depthwise (the int8 depthwise conv's)."""
    del profile
    if spec.groups > 1 and spec.icg == 1:
        return "depthwise conv (the int8 depthwise conv's)"
    if spec.groups > 1 and (spec.icg % depth or spec.ocg % 4):
        return (f"{spec.groups} groups of {spec.icg} input and {spec.ocg} output channels "
                f"(the int8 conv takes groups of whole {depth}-channel blocks, 4 outputs)")
    if spec.out_channels % 4:
        return f"{spec.out_channels} output channels (int8 strategy needs a multiple of 4)"
    return ""

def name(spec: Conv2dSpec, predecoded: bool = False, unsigned: bool = False,
         epilogue: Epilogue = Epilogue(), out: QuantSpec | None = None,
         family: str = FAMILY) -> str:
    """``q8_conv2d_<shape>_b<bits>`` for a codebook layer; ``..._w8`` for a float32 weight
    quantized per output channel (:func:`quantize_weight`); ``family`` for another form of
    the conv on the same compute (:mod:`.smmla`)."""
    return (family + spec.name.split("conv2d", 1)[1]
            + ("_w8" if spec.bits == FP32_WEIGHT else "") + ("_pre" if predecoded else "")
            + ("_u8" if unsigned else "") + epilogue.suffix
            + (f"_to_{out.name}" if out is not None else ""))


def why_not_out(spec: Conv2dSpec, epilogue: Epilogue, out: QuantSpec,
                unsigned: bool = False) -> str:
    """Empty when the conv can write its outputs as ``out`` (int8 between layers), else why
    not: no residual (a float32 operand the fixed scale would have to reach), the shape of
    the next kernel's input, unpadded (the reader pads), and the layout its form writes as
    it is:
    - the sdot and smmla convs: signed 4- or 8-channel groups in rows of whole 4-column
      runs (:func:`padded_out_w`: the columns past the row hold the outputs of the zero
      columns, which the reader skips);
    - the x86 rows form (``unsigned``, :mod:`.vnni`): rows of one channel (depth 1)
      stored + 128, the x86 int8 depthwise conv's input."""
    if epilogue.residual:
        return "it adds a residual"
    if (out.batch, out.channels, out.height, out.width) != tuple(spec.out_shape):
        return f"its output {tuple(spec.out_shape)} is not the next kernel's input"
    if unsigned:
        if not vnni.rows(spec):
            return f"{spec.out_w} columns: the x86 int8 conv's 4 x 4 form writes float32 only"
        if (out.depth, out.offset, out.phases, out.extra, tuple(out.padding)) != (
                1, 128, 1, 0, (0, 0, 0, 0)):
            return "the next kernel reads another layout than unpadded unsigned rows"
        return ""
    if out.depth not in DEPTHS or spec.out_channels % out.depth or (
            out.offset, out.phases, out.extra, tuple(out.padding)) != (
            0, 1, padded_out_w(spec) - spec.out_w, (0, 0, 0, 0)):
        return ("the next kernel reads another layout than unpadded signed 4- or 8-channel "
                "groups in rows of whole 4-column runs")
    return ""

def unsigned_input(profile) -> bool:
    """Whether int8 convs for ``profile``'s core store their input + 128 as uint8: on x86
    with VNNI, whose ``vpdpbusd`` (512 bits) multiplies unsigned by signed bytes."""
    return profile is not None and profile.is_x86 and profile.vnni

def compute(spec: Conv2dSpec, predecoded: bool = False, unsigned: bool = False,
            epilogue: Epilogue = Epilogue(), out: QuantSpec | None = None,
            family: str = FAMILY, depth: int = 4) -> tvm.tirx.PrimFunc:
    """The unscheduled PrimFunc ``(Xq, s_x, packed, q_codebook, D[, CORR][, B][, R]) -> Y``
    (``Xq``, ``s_x`` from :func:`.operands.quantize.compute`; ``B``, ``R``: see :class:`Epilogue`).

    Blocks: ``decode`` (the weight as int8 ``[O/4, kh, kw, C4/d, 4 (o), d (c)]``: the 4x4
    tiles ``sdot`` takes, ``d`` = ``depth`` 4; 8 for the smmla conv of ``family``
    :mod:`.smmla`, which reads ``Xq`` in 8-channel groups), ``acc`` (int32 sums, NCHW)
    and ``dequant`` (with the epilogue).

    ``unsigned``: ``Xq`` holds ``q + 128`` as uint8 (what x86 ``vpdpbusd`` multiplies), so
    the sums carry ``128 * sum(W[o])``, which the per-channel ``CORR[o]`` (from
    :func:`correction`) takes off before dequantizing: the same integers as the signed form.

    ``out`` (int8 between layers, :mod:`dgms_tvm.passes.int8_chain`): ``Y`` is int8 in that
    layout (:func:`why_not_out`), each value ``round(y)`` clamped to ``[0, 127]`` after a
    relu (``[-127, 127]`` without), the scale folded into ``D`` and ``B`` by the pass.
    """
    if out is not None and why_not_out(spec, epilogue, out, unsigned):
        raise ValueError(why_not_out(spec, epilogue, out, unsigned))
    s = spec
    if supports(s, depth=depth):
        raise ValueError(supports(s, depth=depth))
    if s.bits == FP32_WEIGHT and not predecoded:
        raise ValueError("a float32 weight reaches the int8 conv quantized and tiled "
                         "(predecoded=True: quantize_weight, conv_order)")
    kh, kw = s.kernel
    if depth not in DEPTHS:
        raise ValueError(f"input channels in groups of {depth} (the int8 conv reads {DEPTHS})")
    qs = QuantSpec.of(s, unsigned, depth)
    # input channel blocks a sum runs over (a group's, where the conv is grouped)
    blocks = qs.c4 // depth if s.groups == 1 else s.icg // depth
    xq = te.placeholder(tuple(map(i64, qs.out_shape)), qs.dtype, "Xq")
    sx = te.placeholder((i64(1),), "float32", "SX")
    d = te.placeholder((i64(s.out_channels),), "float32", "D")
    wshape = tuple(map(i64, (s.out_channels // 4, kh, kw, blocks, 4, depth)))
    if predecoded:
        wq = te.placeholder(wshape, "int8", "W")
        weights = [wq]
    else:
        p = te.placeholder((i64(s.out_channels), i64(row_bytes(s.reduction, s.bits))), "uint8",
                           "P")
        qcb = te.placeholder((i64(1 << s.bits),), "int8", "Q")
        weights = [p, qcb]

        def weight(oo, r, q, cb, o4, cc):
            c = cb * depth + cc
            k = (c * kh + r) * kw + q
            return tvm.tirx.if_then_else(c < s.icg,
                                         qcb[decode_index(p, oo * 4 + o4, k, s.bits)],
                                         tvm.tirx.const(0, "int8"))

        wq = te.compute(wshape, weight, name="decode")
    rr = te.reduce_axis((i64(0), i64(kh)), "rr")
    rq = te.reduce_axis((i64(0), i64(kw)), "rq")
    rb = te.reduce_axis((i64(0), i64(blocks)), "rb")
    rc = te.reduce_axis((i64(0), i64(depth)), "rc")
    (sh, sw), (dh, dw) = s.stride, s.dilation

    def block(o, rb):  # the input channel block: the group's own blocks, where grouped
        # (by o // 4 first: the same for a micro-kernel's 4 outputs, as tensorize sees it)
        return rb if s.groups == 1 else o // 4 // (s.ocg // 4) * blocks + rb

    acc = te.compute(
        tuple(map(i64, (s.batch, s.out_channels, s.out_h, padded_out_w(s, unsigned)))),
        lambda n, o, yy, xx: te.sum(
            xq[n, yy * sh + rr * dh, block(o, rb), (xx * sw + rq * dw) % sw,
               (xx * sw + rq * dw) // sw, rc].astype("int32")
            * wq[o // 4, rr, rq, rb, o % 4, rc].astype("int32"),
            axis=[rr, rq, rb, rc]),
        name="acc")
    corr = te.placeholder((i64(s.out_channels),), "int32", "CORR") if unsigned else None
    ep = epilogue
    bias = te.placeholder((i64(s.out_channels),), "float32", APPENDED_SHIFT) if ep.bias \
        else None
    res = te.placeholder(tuple(map(i64, s.out_shape)), "float32", "R") if ep.residual else None

    def dequant(n, o, yy, xx):
        a = acc[n, o, yy, xx] - corr[o] if unsigned else acc[n, o, yy, xx]
        v = a.astype("float32") * (sx[0] * d[o])
        if ep.bias:
            v = v + bias[o]
        if ep.residual:
            v = v + res[n, o, yy, xx]
        if out is not None:  # clamp, round, int8 (relu6's bound is the scale's)
            lo = 0.0 if ep.act else -127.0
            v = tvm.te.min(tvm.te.max(v, tvm.tirx.const(lo, "float32")),
                           tvm.tirx.const(127.0, "float32"))
            r = tvm.tirx.round(v)
            return (r + float(out.offset) if out.offset else r).astype(out.dtype)
        if ep.act:
            v = tvm.te.max(v, tvm.tirx.const(0.0, "float32"))
        if ep.act == "relu6":
            v = tvm.te.min(v, tvm.tirx.const(6.0, "float32"))
        return v

    # (int8: NCHW, over whole 4-column runs for the sdot conv, laid out as [N, H, O/d, 1,
    # W, d] below)
    yshape = s.out_shape if out is None or unsigned else (*s.out_shape[:3], padded_out_w(s))
    y = te.compute(tuple(map(i64, yshape)), dequant, name="dequant")
    extra = [t for t in (corr, bias, res) if t is not None]
    func = te.create_prim_func([xq, sx, *weights, d, *extra, y])
    attrs = {
        KERNEL_ATTR: family,
        SPEC_ATTR: s.to_json(),
        PREDECODED_ATTR: int(predecoded),
        UNSIGNED_ATTR: int(unsigned),
        "op_pattern": OPAQUE,
        "tirx.noalias": True,
    }
    if depth != 4:
        attrs[DEPTH_ATTR] = depth
    if epilogue:
        attrs[EPILOGUE_ATTR] = json.dumps(dataclasses.asdict(epilogue))
    if out is not None:
        attrs[OUT_ATTR] = out.to_json()
        sch = tvm.s_tir.Schedule(func)
        d = out.depth
        sch.transform_layout(sch.get_sblock("dequant"), ("write", 0), lambda n, o, yy, xx: (
            n, yy, o // d, tvm.tirx.const(0, "int64"), xx, o % d))
        func = sch.mod["main"]
    return func.with_attrs(attrs).without_attr("global_symbol")

def reference(spec: Conv2dSpec, x, indices, q_codebook, d) -> np.ndarray:
    """NumPy oracle of the int8 strategy: the same quantization, exact integer sums."""
    return reference_int8(spec, x, np.asarray(q_codebook)[np.asarray(indices)], d)

def reference_int8(spec: Conv2dSpec, x, wq, d) -> np.ndarray:
    """:func:`reference` from the int8 weight ``wq[O, C, kh, kw]`` itself."""
    xq, sx = quantize_input(x)
    # exact sums, rounded to float32 as the kernel does
    acc = conv_reference(spec, xq, np.asarray(wq).astype(np.float64))
    return acc * (sx * np.asarray(d, np.float32))[None, :, None, None]


def reference_out(out: QuantSpec, y: np.ndarray, relu: bool) -> np.ndarray:
    """The oracle of a conv writing int8 (``out``) from its float outputs ``y`` (the
    epilogue's, before the activation, scale folded in): clamped, rounded, laid out."""
    y = np.maximum(y, 0) if relu else y
    return layout(out, quantize_fixed(y, 1.0))

def _made(func: tvm.tirx.PrimFunc) -> dict:
    """The arguments of :func:`compute` that made ``func``, but its epilogue and output."""
    attrs = func.attrs
    return {"predecoded": bool(int(attrs[PREDECODED_ATTR])),
            "unsigned": bool(int(attrs[UNSIGNED_ATTR])), "family": str(attrs[KERNEL_ATTR]),
            "depth": int(attrs[DEPTH_ATTR]) if DEPTH_ATTR in attrs else 4}


def with_epilogue(func: tvm.tirx.PrimFunc, epilogue: Epilogue) -> tuple[str, tvm.tirx.PrimFunc]:
    """(name, kernel) of the conv ``func`` made again with ``epilogue``."""
    spec, made = Conv2dSpec.from_func(func), _made(func)
    depth = made.pop("depth")
    return (name(spec, epilogue=epilogue, **made),
            compute(spec, epilogue=epilogue, depth=depth, **made))


def _epilogue(func: tvm.tirx.PrimFunc) -> Epilogue:
    if func.attrs is None or EPILOGUE_ATTR not in func.attrs:
        return Epilogue()
    return Epilogue(**json.loads(str(func.attrs[EPILOGUE_ATTR])))


def bound(func: tvm.tirx.PrimFunc) -> float | None:
    """The largest output the conv can write where its epilogue bounds it (relu6: 6)."""
    return 6.0 if _epilogue(func).act == "relu6" else None


def why_not_quantized(func: tvm.tirx.PrimFunc, out: QuantSpec) -> str:
    return why_not_out(Conv2dSpec.from_func(func), _epilogue(func), out,
                       bool(int(func.attrs[UNSIGNED_ATTR])))


def with_quantized_output(func: tvm.tirx.PrimFunc,
                          out: QuantSpec) -> tuple[str, tvm.tirx.PrimFunc]:
    """(name, kernel) of the conv ``func`` made again to write int8 in ``out``'s layout."""
    spec, ep, made = Conv2dSpec.from_func(func), _epilogue(func), _made(func)
    depth = made.pop("depth")
    return (name(spec, epilogue=ep, out=out, **made),
            compute(spec, epilogue=ep, out=out, depth=depth, **made))


def peak(profile, bits: int):
    """``sdot``: 16 multiply-adds (4 lanes x 4 bytes); x86 ``vpdpbusd`` on 512 bits: 64."""
    del bits
    if profile.dotprod:
        return ("sdot", 16)
    return ("vpdpbusd", 64) if profile.vnni else None


#: No sampled design space yet: tuning leaves the sdot conv to its hand schedule.
KERNEL = KernelFamily(FAMILY, Conv2dSpec, compute, schedule, reference, supports, apply=apply,
                      knobs=True, peak=peak, fusion=Fusion(with_epilogue, scale=("D",)),
                      int8_out=Int8Out(bound, why_not_quantized, with_quantized_output))
