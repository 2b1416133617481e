"""Codebook conv2d against its NumPy oracle, scheduled and unscheduled, on the host; the
scheduled kernel also builds for aarch64 (with and without dotprod)."""

import numpy as np
import pytest
import tvm

from dgms_tvm.kernels.common import FP32_WEIGHT, standalone
from dgms_tvm.kernels.fp32 import conv2d
from dgms_tvm.schedules import load_knobs
from dgms_tvm.targets import get_profile
from tests.helpers import random_codebook_weight, rel_err, run_kernel

S = conv2d.Conv2dSpec
CASES = [
    # (spec, why it is here)
    (S(1, 16, 10, 10, 32, (3, 3), padding=(1, 1, 1, 1)), "3x3 same"),
    (S(1, 16, 9, 11, 24, (3, 3), (2, 2), (1, 1, 1, 1)), "stride 2, odd sizes"),
    (S(2, 8, 8, 8, 16, (1, 1)), "1x1, batch 2"),
    (S(1, 8, 9, 9, 8, (1, 1), (2, 2)), "1x1 stride 2 (downsample)"),
    (S(1, 8, 12, 12, 8, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2)), "dilation 2"),
    (S(1, 16, 11, 9, 16, (3, 3), (2, 2), (1, 0, 2, 1), (2, 1), groups=16), "depthwise, "
     "asymmetric padding, mixed dilation"),
    (S(1, 32, 8, 8, 32, (3, 3), (1, 1), (1, 1, 1, 1), groups=32), "depthwise"),
    (S(1, 16, 7, 7, 32, (3, 3), (1, 1), (1, 1, 1, 1), groups=2), "2 groups, ocg 16"),
    (S(1, 12, 7, 7, 24, (3, 1), (1, 2), (1, 0, 1, 0), groups=4), "4 groups, ocg 6, 3x1"),
    (S(1, 3, 15, 15, 10, (5, 5), (3, 3), (2, 2, 2, 2)), "5x5 stride 3, 10 channels"),
    # tiles of 1 (no divisor of the width / channels up to the tile): the vector loop is gone
    (S(1, 48, 5, 17, 72, (1, 1), groups=3), "3 groups of 24, 17 wide (prime)"),
    (S(1, 8, 4, 19, 37, (3, 3), (1, 1), (1, 1, 1, 1)), "37 channels, 19 wide (primes)"),
]


def _check(spec, cw, rng, schedule):
    x = rng.normal(size=(spec.batch, spec.in_channels, spec.height, spec.width))
    x = x.astype(np.float32)
    func = conv2d.compute(spec)
    if schedule:
        func = conv2d.schedule(func, load_knobs("x86")["cb_conv2d"])
    args = [x, cw.packed, cw.codebook] + ([cw.scale] if spec.scaled else [])
    got = run_kernel(func, [*args, np.zeros(spec.out_shape, np.float32)])
    want = conv2d.reference(spec, x, cw.dense())
    assert got.shape == want.shape
    assert rel_err(got, want) < 1e-5, spec.name


@pytest.mark.parametrize("spec,why", CASES, ids=[c[1] for c in CASES])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_conv2d_matches_oracle(spec, why, bits, rng):
    import dataclasses

    scaled = bits in (3, 4)  # the scaled (BatchNorm-folded) operand on two widths
    spec = dataclasses.replace(spec, bits=bits, scaled=scaled)
    cw = random_codebook_weight(rng, spec.weight_shape, bits, scaled=scaled)
    _check(spec, cw, rng, schedule=True)


@pytest.mark.parametrize("spec,why", CASES, ids=[c[1] for c in CASES])
def test_fp32_weight_variant_matches_oracle(spec, why, rng):
    import dataclasses

    spec = dataclasses.replace(spec, bits=FP32_WEIGHT)
    w = rng.normal(size=spec.weight_shape).astype(np.float32)
    x = rng.normal(size=(spec.batch, spec.in_channels, spec.height, spec.width))
    x = x.astype(np.float32)
    func = conv2d.schedule(conv2d.compute(spec), load_knobs("x86")["cb_conv2d"])
    got = run_kernel(func, [x, w, np.zeros(spec.out_shape, np.float32)])
    assert spec.name.startswith("fp32_conv2d_")
    assert rel_err(got, conv2d.reference(spec, x, w)) < 1e-5


@pytest.mark.parametrize("spec,why", CASES[:3] + CASES[5:6], ids=lambda c: str(c)[:20])
def test_unscheduled_conv2d_matches_oracle(spec, why, rng):
    cw = random_codebook_weight(rng, spec.weight_shape, spec.bits)
    _check(spec, cw, rng, schedule=False)


def test_reference_matches_torch(rng):
    torch = pytest.importorskip("torch")
    spec = S(1, 12, 9, 10, 24, (3, 3), (2, 1), (1, 2, 0, 1), (1, 2), groups=3)
    x = rng.normal(size=(1, 12, 9, 10)).astype(np.float32)
    w = rng.normal(size=spec.weight_shape).astype(np.float32)
    xt = torch.nn.functional.pad(torch.from_numpy(x), (2, 1, 1, 0))  # left, right, top, bottom
    want = torch.nn.functional.conv2d(xt, torch.from_numpy(w), stride=(2, 1), dilation=(1, 2),
                                      groups=3).numpy()
    assert rel_err(conv2d.reference(spec, x, w), want) < 1e-6


@pytest.mark.parametrize("target", ["cortex-a53", "cortex-a76"])
def test_scheduled_conv2d_builds_for_aarch64(target):
    profile = get_profile(target)
    knobs = load_knobs(target)["cb_conv2d"]
    for spec in (CASES[0][0], CASES[6][0]):
        func = conv2d.schedule(conv2d.compute(spec), knobs)
        lib = tvm.compile(standalone(func), target=profile.tvm_target())
        asm = lib.mod.inspect_source("s")
        assert "fmla" in asm or "fmul" in asm  # NEON float arithmetic was generated


def test_strided_depthwise_reads_a_deinterleaved_input():
    # The strided depthwise case above runs through the column-deinterleaved padded input.
    assert conv2d.deinterleaved(CASES[5][0]) and "pad" in str(conv2d.compute(CASES[5][0]))
    assert not any(conv2d.deinterleaved(spec) for spec, _ in CASES[:5])
    assert not conv2d.deinterleaved(CASES[6][0])  # depthwise, unit stride
