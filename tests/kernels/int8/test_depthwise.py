"""The int8 depthwise conv (kernels.int8.depthwise) against its NumPy oracle on the host: bit
widths, strides, dilations, paddings, channel counts that do not fill a group, 4- and 16-channel
groups, the int8 extremes, float32 and int8 outputs; and the sdot conv writing its input
(kernels.int8.sdot, int8 between layers). Running on the emulated cores: tests/device."""

import dataclasses

import numpy as np
import pytest
import tvm

from dgms_tvm import strategies
from dgms_tvm.kernels.common import FP32_WEIGHT, standalone
from dgms_tvm.kernels.conv import Conv2dSpec as S
from dgms_tvm.kernels.epilogue import Epilogue
from dgms_tvm.kernels.int8 import depthwise, sdot
from dgms_tvm.kernels.int8.operands import quantize, weights
from dgms_tvm.kernels.int8.operands.quantize import QuantSpec
from dgms_tvm.schedules import load_knobs
from dgms_tvm.targets import get_profile
from tests.helpers import random_codebook_weight, rel_err, run_kernel
from tests.kernels.int8.test_sdot import _weights, quantize_on_host

CASES = [
    # (spec, why it is here)
    (S(1, 8, 10, 12, 8, (3, 3), padding=(1, 1, 1, 1), groups=8), "3x3 same"),
    (S(1, 32, 17, 16, 32, (3, 3), (2, 2), (1, 1, 1, 1), groups=32), "stride 2 (8-pixel "
     "deinterleaving copy), odd height"),
    (S(2, 6, 9, 7, 6, (3, 3), (2, 2), (1, 1, 1, 1), groups=6), "stride 2, odd sizes, batch 2, "
     "6 channels (a group half full)"),
    (S(1, 5, 7, 7, 5, (3, 3), padding=(1, 1, 1, 1), groups=5), "7 wide: 4 + 3 pixels"),
    (S(1, 4, 14, 14, 4, (5, 5), (1, 2), (2, 1, 2, 2), groups=4), "5x5, mixed stride, "
     "asymmetric padding"),
    (S(1, 4, 13, 11, 4, (3, 3), (2, 2), (0, 1, 2, 1), (2, 1), groups=4), "dilation 2x1"),
    (S(1, 3, 15, 15, 3, (3, 3), (3, 3), (1, 1, 1, 1), groups=3), "stride 3: pixel copy"),
]


def _case(conv, rng, depth=4, act="", out=None, extreme=False, gain=1.0):
    """(spec, operands, oracle) with int8 inputs and weights, all at +-127 if ``extreme``."""
    spec = depthwise.Int8DwSpec(conv, act=act, depth=depth, out=out)
    c = conv.in_channels
    shape = (conv.batch, c, conv.height, conv.width)
    if extreme:  # the largest sums of either sign: every product +-127 * 127
        x = np.where(rng.random(shape) < 0.5, -127, 127)
        wq = np.where(rng.random((c, 1, *conv.kernel)) < 0.5, -127, 127).astype(np.int8)
        x[:, 0::4], wq[0::4] = 127, 127  # the largest positive sum
        x[:, 1::4], wq[1::4] = -127, 127  # the largest negative sum
    else:
        x = rng.integers(-127, 128, size=shape)
        if conv.bits == FP32_WEIGHT:
            wq, _ = weights.quantize_weight(rng.normal(size=(c, 1, *conv.kernel)))
        else:
            cw = random_codebook_weight(rng, (c, 1, *conv.kernel), conv.bits)
            q, _ = weights.quantize_codebook(cw.codebook, None, c)
            wq = q[cw.indices()]
    sx = np.float32(0.01)
    d = ((rng.random(c) + 0.5) * 0.01 * gain).astype(np.float32)
    b = (rng.normal(size=c) * gain).astype(np.float32)
    yshape, ydt = (conv.out_shape, np.float32) if out is None else (out.out_shape, out.dtype)
    args = [quantize.layout(spec.inp, x.astype(np.int8)), np.array([sx]),
            depthwise.weights(spec, wq), d, b, np.full(yshape, 77, ydt)]
    return spec, args, depthwise.reference(spec, x, sx, wq, d, b)


@pytest.mark.parametrize("conv,why", CASES, ids=[c[1] for c in CASES])
@pytest.mark.parametrize("bits", [2, 4, 8, FP32_WEIGHT])
@pytest.mark.parametrize("depth", [4, 8, 16])
def test_int8_depthwise_matches_oracle(conv, why, bits, depth, rng):
    conv = dataclasses.replace(conv, bits=bits)
    spec, args, want = _case(conv, rng, depth, act=("", "relu", "relu6")[bits % 3])
    got = run_kernel(depthwise.compute(spec), args)
    assert rel_err(got, want) < 1e-6, spec.name


@pytest.mark.parametrize("conv,why", CASES[:3], ids=[c[1] for c in CASES[:3]])
@pytest.mark.parametrize("depth", [4, 8, 16])
def test_int8_extremes(conv, why, depth, rng):
    """Every product +-127 x 127: the int16 pair sums at their largest (+-32258), the int32
    sums of 9 taps exact."""
    spec, args, want = _case(dataclasses.replace(conv, bits=4), rng, depth, extreme=True)
    got = run_kernel(depthwise.compute(spec), args)
    assert rel_err(got, want) < 1e-6
    sx, d, b = args[1][0], args[3], args[4]
    top = 9 * 127 * 127  # a whole window at (1, 1)
    np.testing.assert_allclose(got[0, :2, 1, 1], [top * sx * d[0] + b[0],
                                                  -top * sx * d[1] + b[1]], rtol=1e-6)


QUANTIZED = [
    (S(1, 32, 17, 16, 32, (3, 3), (2, 2), (1, 1, 1, 1), groups=32), dict(), "relu6",
     "stride 2, the next conv's layout as it is"),
    (S(1, 8, 14, 14, 8, (3, 3), padding=(1, 1, 1, 1), groups=8), dict(extra=2), "relu",
     "14 wide: columns past the row (the sdot conv's), pad value kept"),
    (S(1, 16, 7, 7, 16, (3, 3), padding=(1, 1, 1, 1), groups=16),
     dict(depth=16, padding=(1, 1, 1, 1)), "", "16-channel groups; the next conv pads; "
     "no activation: negative values"),
    (S(1, 8, 7, 7, 8, (3, 3), padding=(1, 1, 1, 1), groups=8), dict(), "relu",
     "7 wide, unpadded: the last 3 pixels stored alone"),
    (S(1, 24, 14, 14, 24, (3, 3), (2, 2), (1, 1, 1, 1), groups=24), dict(depth=8, extra=1),
     "relu6", "8-channel groups (the smmla conv's), stride 2, 7 wide: a column past the row"),
]


@pytest.mark.parametrize("conv,out,act,why", QUANTIZED, ids=[c[3] for c in QUANTIZED])
def test_int8_output_matches_oracle(conv, out, act, why, rng):
    """Written as the next int8 conv's input: the oracle's values (a float32 tie rounded the
    other way by a fused multiply-add may differ by one), clamped at both ends, and the pad
    value on every byte no output lands on."""
    depth = out.get("depth", 4)
    q = QuantSpec(*conv.out_shape, **{"depth": depth, **out})
    spec, args, want = _case(dataclasses.replace(conv, bits=4), rng, depth, act, q,
                             gain=80.0)
    func = depthwise.schedule(depthwise.compute(spec), {})
    got = run_kernel(func, args)
    assert got.dtype == want.dtype and got.shape == want.shape
    diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, spec.name
    assert (want == 127).any() and (want == (0 if act else -127)).any()
    args[-1] = np.full(want.shape, -100, want.dtype)  # whatever the buffer held before
    np.testing.assert_array_equal(run_kernel(func, args), got)


def test_refusals():
    dw = S(1, 8, 8, 8, 8, (3, 3), padding=(1, 1, 1, 1), groups=8, bits=4)
    assert "depthwise" in depthwise.supports(S(1, 8, 8, 8, 8, (3, 3), bits=4), None)
    assert depthwise.supports(dw, None) == ""
    # tried on the cores whose int8 conv writes its input int8 (aarch64) only
    for target, tried in (("neoverse-n1", True), ("cortex-a55", True),
                          ("cortex-a72", True), ("cortex-a53", True), ("x86", False)):
        cands = strategies.conv2d_candidates("int8", get_profile(target))
        assert (depthwise.FAMILY in cands) == tried, target
        assert cands[-2:] == ("dw_conv2d", "cb_conv2d")
    with pytest.raises(ValueError, match="other channel groups"):
        depthwise.Int8DwSpec(dw, out=QuantSpec(1, 8, 8, 8, offset=128))
    with pytest.raises(ValueError, match="groups of 16"):
        depthwise.Int8DwSpec(dw, depth=16, out=QuantSpec(1, 8, 8, 8, depth=16))
    spec = depthwise.Int8DwSpec(dw, act="relu6", out=QuantSpec(1, 8, 8, 8))
    assert depthwise.Int8DwSpec.from_json(spec.to_json()) == spec
    assert depthwise.KERNEL.int8_out.bound(depthwise.compute(spec)) == 6.0


def test_int8_depthwise_builds_for_aarch64():
    """smull / smlal products two taps at a time, widened by saddw; fcvtns rounds."""
    conv = S(1, 32, 16, 16, 32, (3, 3), (1, 1), (1, 1, 1, 1), groups=32, bits=4)
    spec = depthwise.Int8DwSpec(conv, act="relu6", out=QuantSpec(1, 32, 16, 16))
    func = depthwise.schedule(depthwise.compute(spec), load_knobs("neoverse-n1")["q8_dw_conv2d"])
    lib = tvm.compile(standalone(func), target=get_profile("neoverse-n1").tvm_target())
    asm = lib.mod.inspect_source("s")
    for op in ("smull\t", "smlal\t", "saddw\t", "fcvtns\t"):
        assert op in asm, op
    assert "frint" not in asm


# The sdot conv writing the int8 depthwise conv's input (kernels.int8.sdot, ``out``).

INT8_OUT = [S(1, 16, 14, 14, 24, (1, 1), bits=4, scaled=True),
            S(1, 12, 9, 11, 8, (3, 3), (2, 2), (1, 1, 1, 1), bits=2)]


def written(spec):
    """The layout an int8 conv writes for the int8 depthwise conv after it."""
    return QuantSpec(*spec.out_shape, extra=quantize.padded_out_w(spec) - spec.out_w)


@pytest.mark.parametrize("spec", INT8_OUT, ids=["1x1, 14 wide", "3x3 stride 2, 2-bit"])
@pytest.mark.parametrize("act", ["relu6", ""])
def test_int8_conv_writing_int8_matches_oracle(spec, act, rng):
    """Its dequantized outputs times ``1 / scale`` (folded into ``D`` and ``B``), clamped and
    rounded, in ``[N, H, O/4, 1, W4, 4]`` (``W4``: whole 4-column runs; the columns past
    the row, outputs of zero inputs, are no reader's): the sdot conv's layout, its generic
    form on this host (the x86 form writes its own: tests/kernels/int8/test_vnni.py)."""
    dot = "none"
    cw, q, d = _weights(spec, rng)
    x = rng.normal(size=(spec.batch, spec.in_channels, spec.height, spec.width))
    x = x.astype(np.float32)
    b = rng.normal(size=spec.out_channels).astype(np.float32)
    ep = Epilogue(True, False, act)
    out = written(spec)
    unsigned = dot == "vnni"
    y = sdot.reference(spec, x, cw.indices(), q, d) + b[None, :, None, None]
    scale = np.float32(np.abs(y).max() / 127 * 0.7)  # 30 % of the range clamped
    want = sdot.reference_out(out, y / scale, bool(act))
    func = sdot.schedule(sdot.compute(spec, unsigned=unsigned, epilogue=ep, out=out),
                         dict(load_knobs("x86")["q8_conv2d"], dot=dot))
    xq, sx = quantize_on_host(QuantSpec.of(spec, unsigned), x)
    corr = [weights.correction(cw.indices(), q)] if unsigned else []
    got = run_kernel(func, [xq, sx, cw.packed, q, (d / scale).astype(np.float32), *corr,
                            (b / scale).astype(np.float32), np.zeros(out.out_shape, np.int8)])
    w = spec.out_w
    diff = np.abs(got[..., :w, :].astype(np.int64) - want[..., :w, :].astype(np.int64))
    assert diff.max() <= 1 and (diff > 0).mean() < 2e-3
    assert (want == 127).any() and (want == (0 if act else -127)).any()


def test_int8_conv_output_refusals():
    spec = INT8_OUT[0]
    out = written(spec)
    assert "residual" in sdot.why_not_out(spec, Epilogue(residual=True), out)
    assert "layout" in sdot.why_not_out(spec, Epilogue(), dataclasses.replace(out, depth=16))
    assert "layout" in sdot.why_not_out(spec, Epilogue(),
                                        dataclasses.replace(out, padding=(1, 1, 1, 1)))
    assert "layout" in sdot.why_not_out(spec, Epilogue(), dataclasses.replace(out, extra=0))
    func = sdot.compute(spec, predecoded=True, epilogue=Epilogue(True, False, "relu6"))
    assert sdot.bound(func) == 6.0 and sdot.why_not_quantized(func, out) == ""
    name, made = sdot.with_quantized_output(func, out)
    assert name.endswith("_bias_relu6_to_" + out.name)
    assert QuantSpec.from_json(str(made.attrs[sdot.OUT_ATTR])) == out


def test_int8_conv_writing_int8_builds_for_a_dotprod_core():
    spec = INT8_OUT[0]
    func = sdot.schedule(sdot.compute(spec, predecoded=True, epilogue=Epilogue(True),
                                      out=written(spec)),
                         load_knobs("neoverse-n1")["q8_conv2d"])
    asm = tvm.compile(standalone(func),
                      target=get_profile("neoverse-n1").tvm_target()).mod.inspect_source("s")
    assert "sdot\t" in asm and "str\tq" in asm  # 16 bytes of outputs at a time
