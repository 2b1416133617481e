"""The int8 conv of few input channels on cores without sdot (kernels.int8.gathered): the
gather against its oracle, every byte of its output written; quantize -> gather -> widening
1x1 conv equal to the int8 oracle of the conv itself (integer sums: exactly) over channel
counts 1 to 4, windows, strides, dilation, padding, batches, epilogues and the extremes of
the int8 ranges; its aarch64 build copies a word a tap. Running on the emulated Cortex-A72:
tests/device/test_emulated.py."""

import re

import numpy as np
import pytest
import tvm

from dgms_tvm.kernels.common import standalone
from dgms_tvm.kernels.epilogue import Epilogue
from dgms_tvm.kernels.fp32 import conv2d
from dgms_tvm.kernels.int8 import gathered, sdot, smmla, widening
from dgms_tvm.kernels.int8.operands import decode, quantize
from dgms_tvm.schedules import load_knobs
from dgms_tvm.targets import get_profile
from tests.helpers import rel_err, run_kernel

S = conv2d.Conv2dSpec
E = Epilogue
CASES = [
    (S(1, 3, 20, 18, 8, (3, 3), (2, 2), (1, 1, 1, 1)), E(True, False, "relu6"),
     "MobileNetV2's stem: 3 channels, 3x3 s2 (2 groups of 5 taps)"),
    (S(2, 3, 17, 15, 12, (7, 7), (2, 2), (3, 3, 3, 3)), E(True, False, "relu"),
     "ResNet's stem: 7x7 s2 (10 groups), odd sizes, batch 2"),
    (S(1, 1, 9, 9, 4, (3, 3), (1, 1), (1, 1, 1, 1), (2, 2)), E(),
     "1 channel, dilation 2 (one group of 9 taps, its tail zeroed)"),
    (S(1, 4, 10, 12, 8, (5, 3), (1, 2), (2, 1, 0, 1)), E(True, True, "relu"),
     "4 channels, 5x3, mixed strides, asymmetric padding, residual"),
    (S(1, 2, 6, 7, 4, (1, 1)), E(), "2 channels, 1x1 (one tap)"),
]


def _gather(spec, xq):
    """The gather on the host, its output buffer first filled with a value it must not leave."""
    return run_kernel(gathered.compute(spec), [xq, np.full(spec.out.out_shape, 77, np.int8)])


def _conv(spec, ep, x, wq, d, b, r, limit=widening.WEIGHT_LIMIT, depth=16):
    """Quantize (the kernel) -> gather -> widening 1x1 conv (``depth`` 16) or the smmla
    conv's (8), on the host."""
    ic = gathered.Im2colSpec(spec, depth)
    qs = ic.inp
    lib = tvm.compile(standalone(quantize.compute(qs)), target=get_profile("x86").tvm_target())
    xq, sx = (tvm.runtime.tensor(np.zeros(s, t)) for s, t in ((qs.out_shape, np.int8),
                                                              (1, np.float32)))
    lib["main"](tvm.runtime.tensor(x), xq, sx)
    xq, sx = xq.numpy(), sx.numpy()
    assert np.array_equal(xq, quantize.reference(qs, x)[0])
    cols = _gather(ic, xq)
    pw = ic.pointwise
    w = decode.conv_order(decode.DecodeSpec.of(pw, depth=depth),
                          gathered.columns(ic, wq))
    extra = ([b] if ep.bias else []) + ([r] if ep.residual else [])
    if depth == 8:
        func = smmla.schedule(smmla.compute(pw, predecoded=True, epilogue=ep),
                              load_knobs("x86")["q8m_conv2d"])
    else:
        ls = widening.LongSpec(pw, ep, limit=limit)
        func = widening.schedule(widening.compute(ls), load_knobs("x86")["q8l_conv2d"])
    return run_kernel(func, [cols, sx, w, d, *extra,
                             np.zeros(spec.out_shape, np.float32)])


@pytest.mark.parametrize("spec,ep,why", CASES, ids=[c[2] for c in CASES])
@pytest.mark.parametrize("depth", [16, 8])
def test_gather_matches_its_oracle_and_writes_every_byte(spec, ep, why, depth, rng):
    ic = gathered.Im2colSpec(spec, depth)
    x = rng.normal(size=(spec.batch, spec.in_channels, spec.height, spec.width))
    xq, _ = quantize.reference(ic.inp, x.astype(np.float32))
    got = _gather(ic, xq)
    want = gathered.reference(ic, xq)
    assert np.array_equal(got, want), spec.name
    # each tap's values once, at its column; the columns no tap has are 0
    used = sorted(ic.column(c, i, j) for c in range(spec.in_channels)
                  for i in range(spec.kernel[0]) for j in range(spec.kernel[1]))
    assert len(set(used)) == len(used) == spec.in_channels * ic.taps
    rest = np.setdiff1d(np.arange(ic.groups * depth), used)
    flat = got.transpose(0, 1, 4, 2, 3, 5).reshape(spec.batch, spec.out_h, got.shape[4], -1)
    assert not flat[..., rest].any() and not flat[:, :, spec.out_w:].any()


@pytest.mark.parametrize("spec,ep,why", CASES, ids=[c[2] for c in CASES])
@pytest.mark.parametrize("depth", [16, 8])
def test_gathered_conv_equals_the_int8_conv_oracle(spec, ep, why, depth, rng):
    x = rng.normal(size=(spec.batch, spec.in_channels, spec.height, spec.width))
    x = x.astype(np.float32)
    lim = widening.WEIGHT_LIMIT
    wq = rng.integers(-lim, lim + 1, size=spec.weight_shape).astype(np.int8)
    d = rng.uniform(0.5, 1.5, spec.out_channels).astype(np.float32)
    b = rng.normal(size=spec.out_channels).astype(np.float32)
    r = rng.normal(size=spec.out_shape).astype(np.float32)
    got = _conv(spec, ep, x, wq, d, b, r, depth=depth)
    want = ep.numpy(sdot.reference_int8(spec, x, wq, d), b, r)
    assert rel_err(got, want) < 1e-6, spec.name


@pytest.mark.parametrize("limit,depth", [(widening.WEIGHT_LIMIT, 16), (127, 16), (127, 8)])
@pytest.mark.parametrize("sign", [1, -1])
def test_gathered_conv_at_the_extremes_of_its_ranges(sign, limit, depth):
    """Inputs at +-max (quantized to +-127) against weights at +-limit everywhere: the 7x7
    stem's 147 products of one sign, exact."""
    spec = S(1, 3, 12, 12, 8, (7, 7), (2, 2), (3, 3, 3, 3))
    x = np.full((1, 3, 12, 12), 2.5, np.float32)
    x[0, 1] = -2.5
    wq = np.full(spec.weight_shape, sign * limit, np.int8)
    d = np.ones(8, np.float32)
    got = _conv(spec, E(), x, wq, d, None, None, limit=limit, depth=depth)
    want = sdot.reference_int8(spec, x, wq, d)
    assert np.array_equal(got, want)
    assert np.abs(want).max() == pytest.approx(49 * 127 * limit * 2.5 / 127, rel=1e-6)


def test_what_the_gather_takes():
    stem = S(1, 3, 224, 224, 32, (3, 3), (2, 2), (1, 1, 1, 1))
    ic = gathered.Im2colSpec(stem)
    assert (ic.per_group, ic.groups, ic.pointwise.in_channels) == (5, 2, 32)
    assert ic.pointwise.out_shape == stem.out_shape
    r18 = gathered.Im2colSpec(S(1, 3, 224, 224, 64, (7, 7), (2, 2), (3, 3, 3, 3)))
    assert (r18.groups, r18.pointwise.in_channels) == (10, 160)  # 147 values, 1.09x
    assert gathered.Im2colSpec.from_json(ic.to_json()) == ic
    assert ic.name.startswith("q8_im2col_n1_c3_h224")
    assert "at most 4" in gathered.supports(S(1, 8, 8, 8, 8, (3, 3)))
    assert "groups" in gathered.supports(S(1, 4, 8, 8, 4, (3, 3), groups=4))
    assert "multiple of 4" in gathered.supports(S(1, 3, 8, 8, 6, (3, 3)))
    with pytest.raises(ValueError, match="at most 4"):
        gathered.Im2colSpec(S(1, 5, 8, 8, 8, (3, 3)))
    # the widening conv refuses the stem it serves (3 channels padded to 16)
    assert widening.supports(stem) and widening.supports(ic.pointwise) == ""
    # in the smmla conv's groups of 8: 2 taps of a word each (3-byte steps would leave the
    # last byte of each group unwritten), 25 groups for 49 taps (147 values, 1.36x)
    r18m = gathered.Im2colSpec(r18.conv, 8)
    assert (r18m.step, r18m.per_group, r18m.groups, r18m.pointwise.in_channels) == (
        4, 2, 25, 200)
    assert r18m.name.endswith("_d8") and r18m.out.depth == 8
    assert smmla.supports(stem) and smmla.supports(r18m.pointwise) == ""
    # 2 channels: 3 taps at 2-byte steps fill a group of 8
    assert (gathered.Im2colSpec(S(1, 2, 8, 8, 4, (3, 3)), 8).step,
            gathered.Im2colSpec(S(1, 2, 8, 8, 4, (3, 3)), 8).per_group) == (2, 3)
    with pytest.raises(ValueError, match="groups of 12"):
        gathered.Im2colSpec(stem, 12)


def test_gather_builds_to_a_word_a_tap_on_aarch64():
    """One 32-bit load and store a tap (9 of each per pixel of a 3x3 window), no byte
    copies."""
    ic = gathered.Im2colSpec(S(1, 3, 32, 32, 8, (3, 3), (2, 2), (1, 1, 1, 1)))
    target = get_profile("cortex-a72").tvm_target()
    asm = tvm.compile(standalone(gathered.compute(ic)), target=target).mod.inspect_source("s")
    body = asm.split("main_compute_:")[-1]  # (the argument checks before it read bytes)
    assert len(re.findall(r"\b(?:ldr|ldur)\s+w\d+", body)) in (9, 10)  # (+ the task count)
    assert len(re.findall(r"\b(?:str|stur)\s+w\d+", body)) == 9
    assert not re.search(r"\bldrb\b|\bstrb\b", body)
