"""Depthwise conv2d kernel (with its BatchNorm / relu epilogue) against its NumPy oracle on
the host, over bit widths, strides, dilations, paddings, vector widths and row tiles; it
also builds for aarch64. (It runs on the emulated cores in tests/device.)"""

import dataclasses

import numpy as np
import pytest
import tvm

from dgms_tvm.kernels import depthwise as dw
from dgms_tvm.kernels.common import FP32_WEIGHT, standalone
from dgms_tvm.kernels.conv2d import Conv2dSpec as S
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


def _operands(spec: dw.DepthwiseSpec, rng):
    c = spec.conv
    x = rng.normal(size=(c.batch, c.in_channels, c.height, c.width)).astype(np.float32)
    m = (rng.random(c.out_channels) + 0.5).astype(np.float32)
    b = rng.normal(size=c.out_channels).astype(np.float32)
    out = np.zeros(c.out_shape, np.float32)
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
