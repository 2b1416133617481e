"""The x86 int8 depthwise conv (kernels.int8.depthwise_rows): against its NumPy oracle over strides,
windows, dilation, widths that fill no vector and whole ones, channel counts, batch 2, the
int8 extremes, every activation, float32 and int8 outputs (every byte of the layout the
next conv reads); its weight layout, correction and refusals. It runs ``vpdpbusd``: the
kernel runs on hosts with AVX-512 VNNI (the marker)."""

import dataclasses

import numpy as np
import pytest
import tvm

from dgms_tvm.kernels.common import FP32_WEIGHT, standalone
from dgms_tvm.kernels.fp32 import conv2d, depthwise
from dgms_tvm.kernels.int8 import depthwise_rows
from dgms_tvm.kernels.int8.operands import quantize, weights
from dgms_tvm.kernels.int8.operands.quantize import QuantSpec
from dgms_tvm.targets import get_profile
from tests.helpers import NEEDS_VNNI, rel_err

S = conv2d.Conv2dSpec
R = depthwise_rows.RowsDwSpec


def dw(c, h, w, k=3, s=1, p=1, d=1, n=1):
    return S(n, c, h, w, c, (k, k), (s, s), (p,) * 4, (d, d), groups=c, bits=4)


CASES = [
    (dw(8, 10, 10), "3x3, 10 wide"),
    (dw(5, 9, 13, s=2), "stride 2, odd sizes, 5 channels"),
    (dw(16, 6, 56), "56 wide: 3 vectors and a half"),
    (dw(4, 5, 32, n=2), "32 wide, batch 2"),
    (dw(6, 11, 12, k=5, p=2), "5x5 (two groups of 4 taps per row)"),
    (dw(4, 9, 70, s=4), "column stride 4: the widest one load holds"),
    (dw(3, 12, 20, p=2, d=2), "dilation 2"),
    (S(1, 4, 7, 9, 4, (3, 3), (2, 1), (1, 0, 2, 1), groups=4), "mixed stride, "
     "asymmetric padding"),
]


def _operands(spec, rng, extreme=False):
    c = spec.conv
    xq = rng.integers(-127, 128, (c.batch, c.in_channels, c.height, c.width)).astype(np.int8)
    wq = rng.integers(-127, 128, c.weight_shape).astype(np.int8)
    if extreme:  # every input and weight at +-127, one sign per channel
        xq[:] = 127
        xq[:, 1::2] = -127
        wq[:] = 127
    d = (rng.random(c.out_channels) * 0.05 + 1e-3).astype(np.float32)
    b = rng.normal(size=c.out_channels).astype(np.float32)
    return xq, np.float32(0.02), wq, d, b


def _run(spec, xq, sx, wq, d, b):
    lib = tvm.compile(standalone(depthwise_rows.compute(spec)),
                      target=get_profile("x86").tvm_target())
    out = spec.out
    shape, dt = ((spec.conv.out_shape, np.float32) if out is None
                 else (out.out_shape, out.dtype))
    args = [quantize.layout(spec.inp, xq), np.array([sx], np.float32),
            depthwise_rows.weights(spec, wq), d, weights.weight_correction(wq), b,
            np.full(shape, 7, dt)]  # 7: no byte of the output left unwritten
    targs = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args]
    lib["main"](*targs)
    return targs[-1].numpy()


@NEEDS_VNNI
@pytest.mark.parametrize("conv,why", CASES, ids=[c[1] for c in CASES])
@pytest.mark.parametrize("act", ["", "relu", "relu6"])
def test_float_outputs_match_the_oracle(conv, why, act, rng):
    spec = R(conv, act)
    ops = _operands(spec, rng)
    got, want = _run(spec, *ops), depthwise_rows.KERNEL.reference(spec, *ops)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@NEEDS_VNNI
def test_int8_extremes(rng):
    """9 products of +-127 x 127 per output, less the + 128's correction: exact."""
    spec = R(dw(4, 6, 18))
    ops = _operands(spec, rng, extreme=True)
    got, want = _run(spec, *ops), depthwise_rows.KERNEL.reference(spec, *ops)
    acc = want / (ops[1] * ops[3])[None, :, None, None] - ops[4][None, :, None, None] / (
        ops[1] * ops[3])[None, :, None, None]
    assert np.abs(acc).max() == pytest.approx(9 * 127 * 127, rel=1e-4)
    assert rel_err(got, want) < 1e-6


def written(conv, depth, padding=(0, 0, 0, 0), extra=None):
    """The next conv's unsigned input: ``depth`` channels innermost, the x86 conv's columns
    (rounded up to 16) unless ``extra`` says."""
    ow = conv.out_w
    extra = (-ow) % 16 if extra is None else extra
    return QuantSpec(conv.batch, conv.out_channels, conv.out_h, ow, padding, extra,
                     offset=128, depth=depth)


OUTS = [
    (dw(8, 10, 10), 4, {}, "4-channel groups, 6 columns past a 10-wide row"),
    (dw(8, 9, 35, s=2), 4, {}, "stride 2, 18 wide: a vector and 2 columns"),
    (dw(16, 6, 56), 4, {}, "56 wide"),
    (dw(4, 5, 20, n=2), 2, {"padding": (1, 1, 1, 1), "extra": 3}, "2-channel groups, "
     "padded (the pad value written first), batch 2"),
    (dw(6, 7, 7), 1, {"extra": 0}, "rows of one channel, 7 wide"),
]


@NEEDS_VNNI
@pytest.mark.parametrize("conv,depth,kw,why", OUTS, ids=[o[3] for o in OUTS])
@pytest.mark.parametrize("act", ["", "relu6"])
def test_int8_outputs_fill_the_next_convs_layout(conv, depth, kw, why, act, rng):
    """Every byte of the layout, the pad value included, as the oracle lays it out; the
    values within one of it (float32 rounding at a half)."""
    spec = R(conv, act, out=written(conv, depth, **kw))
    xq, sx, wq, d, b = _operands(spec, rng)
    d = d * 40  # outputs over the whole int8 range, some clamped
    got = _run(spec, xq, sx, wq, d, b)
    want = depthwise_rows.KERNEL.reference(spec, xq, sx, wq, d, b)
    diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
    assert got.dtype == np.uint8 and diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert (want == 255).any() and (want == (128 if act else 1)).any()


def test_weight_layout_correction_and_oracle(rng):
    conv = dw(6, 9, 9, k=5, p=2)
    spec = R(conv)
    wq = rng.integers(-127, 128, conv.weight_shape).astype(np.int8)
    w = depthwise_rows.weights(spec, wq)
    assert w.shape == (6, 5, 8) and np.all(w[:, :, 5:] == 0)  # two groups of 4 taps a row
    np.testing.assert_array_equal(w[:, :, :5], wq[:, 0])
    assert list(weights.weight_correction(wq)) == [128 * int(wq[c].astype(int).sum())
                                                 for c in range(6)]
    # the oracle is the exact depthwise conv of the dequantized values
    xq, sx, _, d, b = _operands(spec, rng)
    y = depthwise_rows.KERNEL.reference(spec, xq, sx, wq, d, b)
    exact = conv2d.reference(dataclasses.replace(conv, bits=FP32_WEIGHT),
                             xq.astype(np.float64) * sx, wq.astype(np.float64) * d[:, None,
                                                                                   None, None])
    assert rel_err(y, exact + b[None, :, None, None]) < 1e-5


def test_refusals():
    assert "depthwise" in depthwise_rows.supports(S(1, 8, 8, 8, 8, (3, 3)))
    assert "64-byte" in depthwise_rows.supports(dw(8, 40, 40, s=5))
    assert not depthwise_rows.supports(dw(8, 40, 40, s=4))
    conv = dw(8, 10, 10)
    assert "signed" in depthwise_rows.why_not_out(
        R(conv), dataclasses.replace(written(conv, 4), offset=0))
    assert "groups" in depthwise_rows.why_not_out(R(conv), written(conv, 8))
    with pytest.raises(ValueError):
        R(conv, out=written(conv, 16))
    assert depthwise.supports(conv) == ""


@NEEDS_VNNI
def test_taps_are_shuffled_into_vpdpbusd():
    spec = R(dw(16, 14, 30, s=2))
    lib = tvm.compile(standalone(depthwise_rows.compute(spec)),
                      target=get_profile("x86").tvm_target())
    asm = lib.mod.inspect_source("s")
    assert "vpdpbusd" in asm and "gather" not in asm
