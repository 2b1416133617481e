"""Depthwise conv2d kernel (with its BatchNorm / relu epilogue) against its NumPy oracle on
the host, over bit widths, strides, dilations, paddings, vector widths and row tiles; it
also builds for aarch64. (It runs on the emulated cores in tests/device.)"""

import dataclasses

import numpy as np
import pytest
import tvm

from dgms_tvm.kernels.common import FP32_WEIGHT, standalone
from dgms_tvm.kernels.conv import Conv2dSpec as S
from dgms_tvm.kernels.fp32 import depthwise as dw
from dgms_tvm.kernels.int8.operands.quantize import QuantSpec
from dgms_tvm.schedules import load_knobs
from dgms_tvm.targets import get_profile
from tests.helpers import random_codebook_weight, rel_err, run_kernel

CASES = [
    # (spec, why it is here)
    (S(1, 8, 10, 12, 8, (3, 3), padding=(1, 1, 1, 1), groups=8), "3x3 same"),
    (S(1, 8, 12, 12, 8, (3, 3), (2, 2), (1, 1, 1, 1), groups=8), "stride 2 (ld2 copy)"),
    (S(2, 6, 9, 7, 6, (3, 3), (2, 2), (1, 1, 1, 1), groups=6), "stride 2, odd sizes, batch 2"),
    (S(1, 5, 7, 7, 5, (3, 3), padding=(1, 1, 1, 1), groups=5), "7 wide: one 7-lane vector"),
    (S(1, 4, 14, 14, 4, (5, 5), (1, 2), (2, 1, 2, 2), groups=4), "5x5, mixed stride, "
     "asymmetric padding"),
    (S(1, 4, 13, 11, 4, (3, 3), (2, 2), (0, 1, 2, 1), (2, 1), groups=4), "dilation 2x1"),
    (S(1, 3, 15, 15, 3, (3, 3), (3, 3), (1, 1, 1, 1), groups=3), "stride 3"),
    (S(1, 2, 18, 18, 2, (3, 3), (5, 5), (1, 1, 1, 1), groups=2), "stride 5: scalar copy"),
]


def _operands(spec: dw.DepthwiseSpec, rng, gain: float = 1.0):
    c = spec.conv
    x = rng.normal(size=(c.batch, c.in_channels, c.height, c.width)).astype(np.float32)
    m = ((rng.random(c.out_channels) + 0.5) * gain).astype(np.float32)
    b = (rng.normal(size=c.out_channels) * gain).astype(np.float32)
    out = np.zeros(c.out_shape if spec.out is None else spec.out.out_shape,
                   np.float32 if spec.out is None else spec.out.dtype)
    if spec.fp32:
        w = rng.normal(size=c.weight_shape).astype(np.float32)
        folded = (w * m[:, None, None, None]).reshape(c.out_channels, -1)
        return [x, folded, b, out], dw.reference(spec, x, w, m, b)
    cw = random_codebook_weight(rng, c.weight_shape, c.bits)
    return [x, cw.packed, cw.codebook, m, b, out], dw.reference(spec, x, cw.dense(), m, b)


@pytest.mark.parametrize("conv,why", CASES, ids=[c[1] for c in CASES])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8, FP32_WEIGHT])
def test_depthwise_matches_oracle(conv, why, bits, rng):
    spec = dw.DepthwiseSpec(dataclasses.replace(conv, bits=bits),
                            act=dw.ACTS[bits % 3])
    args, want = _operands(spec, rng)
    got = run_kernel(dw.compute(spec), args)
    assert rel_err(got, want) < 1e-5, spec.name


@pytest.mark.parametrize("lanes,rows", [(1, 1), (2, 3), (4, 2), (8, 2), (16, 4)])
def test_depthwise_tiles_match_oracle(lanes, rows, rng):
    conv = S(1, 6, 28, 28, 6, (3, 3), (1, 1), (1, 1, 1, 1), groups=6, bits=4)
    spec = dw.DepthwiseSpec(conv, act="relu6", lanes=lanes, rows=rows)
    args, want = _operands(spec, rng)
    assert rel_err(run_kernel(dw.compute(spec), args), want) < 1e-5


def test_knobs_choose_the_tile():
    conv = S(1, 4, 8, 8, 4, (3, 3), padding=(1, 1, 1, 1), groups=4, bits=4)
    func = dw.schedule(dw.compute(dw.DepthwiseSpec(conv)), {"lanes": 8, "rows": 4})
    spec = dw.DepthwiseSpec.from_json(str(func.attrs["dgms.spec"]))
    assert (spec.lanes, spec.rows) == (8, 4)
    assert dw.columns(112, 4) == 4 and dw.columns(14, 4) == 14 and dw.columns(50, 8) == 5


def test_only_depthwise_convs_are_taken():
    assert "depthwise" in dw.supports(S(1, 8, 8, 8, 16, (3, 3), groups=8))
    assert "depthwise" in dw.supports(S(1, 8, 8, 8, 8, (3, 3)))
    with pytest.raises(ValueError, match="activation"):
        dw.DepthwiseSpec(S(1, 8, 8, 8, 8, (3, 3), groups=8), act="gelu")


def quantized_out(conv: S, depth: int, offset: int = 0, padding=(0, 0, 0, 0),
                  extra: int = 0) -> QuantSpec:
    """The quantized input of an int8 conv that reads ``conv``'s output (one phase)."""
    n, c, h, w = conv.out_shape
    return QuantSpec(n, c, h, w, padding, extra, 1, offset, depth)


QUANTIZED = [
    # (conv, out layout, activation, why it is here)
    (S(1, 8, 10, 12, 8, (3, 3), padding=(1, 1, 1, 1), groups=8),
     dict(depth=4), "relu6", "depth 4, 16 columns per run"),
    (S(2, 32, 13, 14, 32, (3, 3), (2, 2), (1, 1, 1, 1), groups=32),
     dict(depth=16, offset=128), "relu", "stride 2, batch 2, depth 16, stored + 128 (x86)"),
    (S(1, 16, 7, 7, 16, (3, 3), padding=(1, 1, 1, 1), groups=16),
     dict(depth=4, extra=1), "relu6", "7 wide: a column past the row (the sdot conv's)"),
    (S(1, 16, 9, 9, 16, (3, 3), (1, 1), (1, 1, 1, 1), groups=16),
     dict(depth=16, padding=(1, 1, 1, 1)), "", "the next conv pads (pad value written); "
     "no activation: negative values"),
    (S(1, 48, 5, 5, 48, (5, 5), (1, 1), (2, 2, 2, 2), groups=48),
     dict(depth=16, offset=128, extra=3), "relu6", "5x5, 5 wide: one column per run"),
]


@pytest.mark.parametrize("conv,out,act,why", QUANTIZED, ids=[c[3] for c in QUANTIZED])
@pytest.mark.parametrize("bits", [2, 4, FP32_WEIGHT])
def test_quantized_output_matches_oracle(conv, out, act, why, bits, rng):
    """Written as the next int8 conv's input: the same int8 values as the oracle (rounding
    to nearest-even of the float32 sums; a tie the float sums round the other way may differ
    by one), clamped: the scale here (folded into M and B) sends many outputs past 127."""
    conv = dataclasses.replace(conv, bits=bits)
    spec = dw.DepthwiseSpec(conv, act=act, out=quantized_out(conv, **out))
    args, want = _operands(spec, rng, gain=40.0)
    got = run_kernel(dw.schedule(dw.compute(spec), {"lanes": 4, "rows": 2}), args)
    assert got.dtype == want.dtype and got.shape == want.shape
    diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, spec.name
    off = spec.out.offset
    assert (want == 127 + off).any(), "the clamp is exercised"
    assert (want == (off if act else off - 127)).any()


def test_quantized_output_writes_every_byte(rng):
    """The pad value where the next conv reads padding or columns past the row, whatever the
    output buffer held before."""
    conv = S(1, 16, 6, 6, 16, (3, 3), padding=(1, 1, 1, 1), groups=16, bits=4)
    spec = dw.DepthwiseSpec(conv, act="relu", out=quantized_out(conv, 4, 128, (1, 1, 1, 1), 2))
    args, want = _operands(spec, rng)
    args[-1] = np.full(spec.out.out_shape, 77, np.uint8)
    np.testing.assert_array_equal(run_kernel(dw.compute(spec), args), want)


def test_quantized_output_is_refused_where_the_layout_does_not_fit():
    conv = S(1, 24, 8, 8, 24, (3, 3), padding=(1, 1, 1, 1), groups=24, bits=4)
    with pytest.raises(ValueError, match="groups of 16"):
        dw.DepthwiseSpec(conv, out=quantized_out(conv, 16))
    with pytest.raises(ValueError, match="column stride"):
        dw.DepthwiseSpec(conv, out=QuantSpec(1, 24, 8, 8, (1, 1, 1, 1), 0, 2, 0, 4))
    with pytest.raises(ValueError, match="not the next conv's input"):
        dw.DepthwiseSpec(conv, out=QuantSpec(1, 24, 4, 4, (0, 0, 0, 0), 0, 1, 0, 4))
    spec = dw.DepthwiseSpec(conv, act="relu6", out=quantized_out(conv, 4))
    assert dw.DepthwiseSpec.from_json(spec.to_json()) == spec  # the optional layout decodes
    assert dw.KERNEL.int8_out.bound(dw.compute(spec)) == 6.0
    assert dw.KERNEL.int8_out.bound(dw.compute(dataclasses.replace(spec, act="relu"))) is None


@pytest.mark.parametrize("target", ["cortex-a72", "neoverse-n1"])
def test_depthwise_builds_for_aarch64(target):
    conv = S(1, 16, 16, 16, 16, (3, 3), (2, 2), (1, 1, 1, 1), groups=16, bits=4)
    func = dw.schedule(dw.compute(dw.DepthwiseSpec(conv, act="relu6")),
                       load_knobs(target)["dw_conv2d"])
    lib = tvm.compile(standalone(func), target=get_profile(target).tvm_target())
    asm = lib.mod.inspect_source("asm") if not lib.mod.imports else \
        lib.mod.imports[0].inspect_source("asm")
    # the strided copy is split by ld2, the window is fmla by element
    assert "ld2" in asm and "fmla" in asm
    # written as int8 for the next conv: one fcvtns rounds and converts, st4 interleaves
    out = quantized_out(conv, 4)
    func = dw.schedule(dw.compute(dw.DepthwiseSpec(conv, act="relu6", out=out)),
                       load_knobs(target)["dw_conv2d"])
    lib = tvm.compile(standalone(func), target=get_profile(target).tvm_target())
    asm = lib.mod.inspect_source("asm") if not lib.mod.imports else \
        lib.mod.imports[0].inspect_source("asm")
    assert "fcvtns" in asm and "frint" not in asm and "st4" in asm


def test_the_int8_writer_interleaves_whole_vectors_where_it_can():
    from dgms_tvm.kernels.int8.operands import writer

    def run(width, depth):
        return writer.Writer(QuantSpec(1, 16, 4, width, depth=depth), relu=True).run

    # powers of 2 dividing the width, up to 64 bytes a run; else the largest divisor
    assert [run(w, 4) for w in (112, 56, 28, 14, 7)] == [16, 8, 4, 2, 7]
    assert [run(w, 16) for w in (112, 56, 28, 14, 7)] == [4, 4, 4, 2, 1]
    assert writer.why_not((1, 16, 4, 8), QuantSpec(1, 16, 4, 8, depth=16)) == ""
