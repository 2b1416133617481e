"""The x86 int8 conv's rows form (kernels.int8.vnni): 16 pixels of one output channel per
``vpdpbusd`` accumulator, against the int8 oracle over widths that fill whole vectors, a
row in one tile, a row with a partial last vector, strides, channel counts that do not fill
a block, and the int8 extremes; its register tiles; its assembly. The kernels run on hosts
with AVX-512 VNNI (the marker); the same operands through the generic code run anywhere."""

import dataclasses

import numpy as np
import pytest
import tvm

from dgms_tvm.kernels.common import FP32_WEIGHT, standalone
from dgms_tvm.kernels.epilogue import Epilogue
from dgms_tvm.kernels.fp32 import conv2d
from dgms_tvm.kernels.int8 import sdot, vnni
from dgms_tvm.kernels.int8.operands import decode, quantize, weights
from dgms_tvm.schedules import load_knobs
from dgms_tvm.targets import get_profile
from tests.helpers import NEEDS_VNNI, rel_err, run_kernel
from tests.kernels.int8.test_sdot import quantize_on_host

S = conv2d.Conv2dSpec
CASES = [
    (S(1, 12, 5, 32, 20, (1, 1)), "1x1, two whole vectors, 20 channels (5 blocks)"),
    (S(1, 6, 4, 28, 12, (3, 3), padding=(1, 1, 1, 1)), "28 wide: the row in one tile, "
     "6 channels (padded to 8)"),
    (S(1, 8, 6, 29, 8, (3, 3), (2, 2), (1, 1, 1, 1)), "stride 2 (15 wide)"),
    (S(2, 4, 3, 70, 16, (1, 3), (1, 1), (0, 1, 0, 1)), "70 wide: a partial last vector, "
     "batch 2"),
    (S(1, 16, 10, 10, 32, (3, 3), padding=(1, 1, 1, 1)), "10 wide"),
    (S(1, 3, 13, 40, 8, (5, 5), (1, 2), (2, 2, 2, 2), (2, 1)), "3 channels, 5x5, "
     "column stride 2, dilation 2"),
]
KNOBS = load_knobs("x86")["q8_conv2d"]


def _run(spec, x, w, dot, ep=Epilogue(), b=None):
    """The predecoded unsigned conv on ``x`` with the float weight ``w`` quantized per
    channel: (ours, the int8 oracle)."""
    wq, d = weights.quantize_weight(w)
    xq, sx = quantize_on_host(quantize.QuantSpec.of(spec, True), x)
    func = sdot.schedule(sdot.compute(spec, predecoded=True, unsigned=True, epilogue=ep),
                         dict(KNOBS, dot=dot))
    tiled = decode.conv_order(decode.DecodeSpec.of(spec), wq)
    got = run_kernel(func, [xq, sx, tiled, d, weights.weight_correction(wq),
                            *([b] if ep.bias else []), np.zeros(spec.out_shape, np.float32)])
    return got, ep.numpy(sdot.reference_int8(spec, x, wq, d), b)


@pytest.mark.parametrize("spec,why", CASES, ids=[c[1] for c in CASES])
@pytest.mark.parametrize("dot", [pytest.param("vnni", marks=NEEDS_VNNI), "none"])
def test_rows_form_matches_the_oracle(spec, why, dot, rng):
    spec = dataclasses.replace(spec, bits=FP32_WEIGHT)
    assert vnni.rows(spec)
    x = rng.normal(size=(spec.batch, spec.in_channels, spec.height, spec.width))
    w = rng.normal(size=spec.weight_shape)
    ep = Epilogue(bias=True, act="relu6")
    b = rng.normal(size=spec.out_channels).astype(np.float32)
    got, want = _run(spec, x.astype(np.float32), w.astype(np.float32), dot, ep, b)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert 0 < (got == 0).mean() < 1 and got.max() == 6


@pytest.mark.parametrize("dot", [pytest.param("vnni", marks=NEEDS_VNNI), "none"])
def test_rows_form_at_the_int8_extremes(dot):
    """Every input at +-127 (stored 255 / 1) against every weight at +-127: the largest
    sums the unsigned form meets, and its correction, exact."""
    spec = S(1, 64, 5, 20, 8, (3, 3), padding=(1, 1, 1, 1), bits=FP32_WEIGHT)
    x = np.ones((1, 64, 5, 20), np.float32)
    x[:, :, :, 12:] = -1
    w = np.ones(spec.weight_shape, np.float32)
    w[1::2] = -1
    got, want = _run(spec, x, w, dot)
    # 576 products of 127 x 127 each, either sign
    assert want.max() == pytest.approx(576, rel=1e-6) == -want.min()
    assert rel_err(got, want) < 1e-6


def test_rows_form_register_tiles():
    # (arithmetic only, on any host: the knobs of a VNNI host, whatever this one has)
    knobs = dict(KNOBS, dot="vnni")
    for spec, _ in CASES:
        xt, ob = sdot.register_tile(spec, knobs, unsigned=True)
        width = quantize.padded_out_w(spec, unsigned=True)
        assert width % 16 == 0 and width % xt == 0 and (spec.out_channels // 4) % ob == 0
        assert xt // 16 * (4 * ob + 1) <= knobs["registers"] - 2
    # A row of up to 64 columns that no vector count splits is one tile (no tail loop).
    assert sdot.register_tile(CASES[1][0], knobs, unsigned=True)[0] == 32
    # Rows of at most 8 columns keep the 4-pixel x 4-channel form, computed 8 wide.
    seven = S(1, 512, 7, 7, 512, (3, 3), padding=(1, 1, 1, 1))
    assert not vnni.rows(seven) and quantize.padded_out_w(seven, unsigned=True) == 8


@NEEDS_VNNI
def test_rows_form_broadcasts_weights_and_stores_rows():
    """One 64-byte input load feeds a vpdpbusd per channel, each broadcasting the channel's
    4 weights from memory; the dequantize stores whole vectors: no gathers or scatters."""
    spec = S(1, 32, 8, 48, 16, (1, 1), bits=FP32_WEIGHT)
    func = sdot.schedule(sdot.compute(spec, predecoded=True, unsigned=True), KNOBS)
    asm = tvm.compile(standalone(func), target=get_profile("x86").tvm_target()).mod \
        .inspect_source("s")
    assert "{1to16}" in asm and "vpdpbusd" in asm
    assert "gather" not in asm and "scatter" not in asm
