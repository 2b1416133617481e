"""The widening int8 conv of cores without sdot (kernels.int8.widening): against the int8
oracle on the host (plain vector code) over shapes, strides, dilations, channel padding,
batches and epilogues, with the depth-16 quantize and decode kernels in front; its aarch64
build selects smull / smlal2 / sadalp / addp. Running on the emulated Cortex-A72: see
tests/device/test_emulated.py."""

import re

import numpy as np
import pytest
import tvm

from dgms_tvm import strategies
from dgms_tvm.kernels.common import standalone
from dgms_tvm.kernels.epilogue import Epilogue
from dgms_tvm.kernels.fp32 import conv2d
from dgms_tvm.kernels.int8 import sdot, widening
from dgms_tvm.kernels.int8.operands import decode, quantize, weights
from dgms_tvm.schedules import load_knobs
from dgms_tvm.targets import get_profile
from tests.helpers import check_int8_out, random_codebook_weight, rel_err, run_kernel
from tests.kernels.int8.test_sdot import quantize_on_host

S = conv2d.Conv2dSpec
E = Epilogue
HOST = get_profile("x86").tvm_target()
CASES = [
    (S(1, 16, 8, 8, 8, (3, 3), padding=(1, 1, 1, 1)), E(), "3x3 same"),
    (S(1, 32, 9, 7, 12, (3, 3), (2, 2), (1, 1, 1, 1)), E(True, False, "relu"),
     "stride 2, odd sizes (a partial tile of 2 pixels), bias + relu"),
    (S(2, 24, 6, 10, 4, (1, 1)), E(True, True, "relu6"),
     "24 channels (padded to 32), batch 2, 1x1, bias + residual + relu6"),
    (S(1, 64, 7, 7, 8, (3, 3), padding=(1, 1, 1, 1), dilation=(2, 2)), E(True, True, "relu"),
     "dilation 2, 5x5 out (flattened tiles, the last of 1 pixel), bias + residual + relu"),
    (S(1, 32, 7, 7, 8, (3, 3), padding=(1, 1, 1, 1)), E(True, False, "relu6"),
     "7x7 out (flattened tiles, the last of 1 pixel), bias + relu6"),
    (S(1, 16, 11, 9, 4, (3, 5), (2, 3), (0, 2, 1, 1), (1, 2)), E(), "3x5, mixed stride and "
     "dilation, asymmetric padding"),
]


def _run(spec, ep, x, wq, d, b, r, bits=None, limit=widening.WEIGHT_LIMIT):
    """Quantize (depth 16) -> [decode (depth 16)] -> widening conv, on the host."""
    ls = widening.LongSpec(spec, ep, limit=limit)
    qs = ls.quant
    assert qs.depth == 16 and qs.phases == 1
    lib = tvm.compile(standalone(quantize.compute(qs)), target=HOST)
    xq = tvm.runtime.tensor(np.zeros(qs.out_shape, qs.dtype))
    sx = tvm.runtime.tensor(np.zeros(1, np.float32))
    lib["main"](tvm.runtime.tensor(x), xq, sx)
    ds = decode.DecodeSpec.of(spec, depth=16)
    assert ds.shape == ls.weight_shape
    if bits is None:
        w = decode.conv_order(ds, wq)
    else:  # the decode kernel, from the packed indices
        idx, q = bits
        w = run_kernel(decode.compute(ds), [decode.pack_for_decode(ds, idx),
                                            weights.q16(q), sx.numpy(),
                                            np.zeros(ds.shape, np.int8)])
        assert np.array_equal(w, decode.conv_order(ds, wq))
    extra = ([b] if ep.bias else []) + ([r] if ep.residual else [])
    func = widening.schedule(widening.compute(ls), load_knobs("x86")["q8l_conv2d"])
    return run_kernel(func, [xq.numpy(), sx.numpy(), w, d, *extra,
                             np.zeros(spec.out_shape, np.float32)])


@pytest.mark.parametrize("limit", [widening.WEIGHT_LIMIT, 127])
@pytest.mark.parametrize("spec,ep,why", CASES, ids=[c[2] for c in CASES])
def test_widening_int8_conv_matches_the_int8_oracle(spec, ep, why, limit, rng):
    """7-bit weights (2 groups of 16 per step) and 8-bit ones (int8-full: 1 per step)."""
    x = rng.normal(size=(spec.batch, spec.in_channels, spec.height, spec.width))
    x = x.astype(np.float32)
    wq = rng.integers(-limit, limit + 1, size=spec.weight_shape).astype(np.int8)
    d = rng.uniform(0.5, 1.5, spec.out_channels).astype(np.float32)
    b = rng.normal(size=spec.out_channels).astype(np.float32)
    r = rng.normal(size=spec.out_shape).astype(np.float32)
    got = _run(spec, ep, x, wq, d, b, r, limit=limit)
    want = ep.numpy(sdot.reference_int8(spec, x, wq, d), b, r)
    assert rel_err(got, want) < 1e-6, spec.name


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_widening_int8_conv_from_decoded_codebook_indices(bits, rng):
    spec = S(1, 32, 6, 6, 8, (3, 3), padding=(1, 1, 1, 1), bits=bits, scaled=bits == 4)
    cw = random_codebook_weight(rng, spec.weight_shape, bits, scaled=spec.scaled)
    q, d = weights.quantize_codebook(cw.codebook, cw.scale, spec.out_channels,
                                     widening.WEIGHT_LIMIT)
    assert widening.WEIGHT_LIMIT // 2 < np.abs(q).max() <= widening.WEIGHT_LIMIT
    x = rng.normal(size=(1, 32, 6, 6)).astype(np.float32)
    wq = q[cw.indices()]
    got = _run(spec, E(), x, wq, d, None, None, bits=(cw.indices(), q))
    assert rel_err(got, sdot.reference(spec, x, cw.indices(), q, d)) < 1e-6
    # the int8 oracle is the exact conv up to the int8 rounding of inputs and codebook
    assert rel_err(got, conv2d.reference(spec, x, cw.dense())) < 0.03


@pytest.mark.parametrize("limit", [widening.WEIGHT_LIMIT, 127])
@pytest.mark.parametrize("sign", [1, -1])
def test_widening_int8_conv_at_the_extremes_of_its_ranges(sign, limit):
    """Every input at 127 and every weight at +-63: each 16-bit lane sums 4 products of
    8001, the most it must hold (32004), without wrapping; an odd last group too. With
    8-bit weights (+-127) a lane sums 2 products of 16129 (32258)."""
    for c in (64, 48):
        spec = S(1, c, 4, 4, 4, (1, 1))
        x = np.ones((1, c, 4, 4), np.float32)
        wq = np.full(spec.weight_shape, sign * limit, np.int8)
        d = np.ones(4, np.float32)
        got = _run(spec, E(), x, wq, d, None, None, limit=limit)
        assert np.allclose(got, sign * limit * c, rtol=1e-6), c  # (127 * limit * c) * s_x


def test_layers_the_widening_kernel_does_not_take():
    assert "input channels" in widening.supports(S(1, 3, 8, 8, 16, (7, 7)))  # a stem
    assert "input channels" in widening.supports(S(1, 20, 8, 8, 16, (1, 1)))  # 20 -> 32
    assert not widening.supports(S(1, 24, 8, 8, 16, (1, 1)))  # 24 -> 32: a third more
    assert "depthwise" in widening.supports(S(1, 16, 8, 8, 16, (3, 3), groups=16))
    assert "16-channel blocks" in widening.supports(S(1, 32, 8, 8, 32, (3, 3), groups=8))
    assert "output channels" in widening.supports(S(1, 16, 8, 8, 6, (1, 1)))
    a72, n1 = (get_profile(t) for t in ("cortex-a72", "neoverse-n1"))
    assert strategies.for_core(strategies.INT8_CONV, a72) == widening.FAMILY
    for core in (n1, get_profile("x86")):
        assert strategies.for_core(strategies.INT8_CONV, core) == "q8_conv2d"
    assert "4-bit" not in widening.takes(S(1, 32, 8, 8, 16, (1, 1), bits=4))
    assert "3-bit indices" in widening.takes(S(1, 32, 8, 8, 16, (1, 1), bits=3))


def test_widening_int8_conv_builds_to_long_multiplies_on_aarch64():
    """Per 32 input channels of a pixel and a channel: smull, smlal2, smlal, smlal2,
    sadalp; 3 addp per channel of a tile at the end."""
    spec = S(1, 64, 8, 8, 8, (3, 3), padding=(1, 1, 1, 1))
    func = widening.schedule(widening.compute(widening.LongSpec(spec)),
                             load_knobs("cortex-a72")["q8l_conv2d"])
    lib = tvm.compile(standalone(func), target=get_profile("cortex-a72").tvm_target())
    asm = lib.mod.inspect_source("s")
    ops = re.findall(r"^\s+([a-z0-9.]+)\s", asm, re.M)
    for op, per in (("smull", 1), ("smlal", 1), ("smlal2", 2), ("sadalp", 1)):
        assert ops.count(op) == 48 * per, op  # 4 pixels x 4 channels x 3 window columns
    assert ops.count("addp") == 12
    assert "saddw" not in asm and "sshll" not in asm  # (the plain pairwise add's form)


def test_widening_int8_conv_with_8_bit_weights_builds_to_one_group_per_step():
    """int8-full: per 16 input channels of a pixel and a channel, smull + smlal2 + sadalp."""
    spec = S(1, 64, 8, 8, 8, (3, 3), padding=(1, 1, 1, 1))
    ls = widening.LongSpec(spec, limit=127)
    assert ls.name.endswith("_w127")
    func = widening.schedule(widening.compute(ls), load_knobs("cortex-a72")["q8l_conv2d"])
    lib = tvm.compile(standalone(func), target=get_profile("cortex-a72").tvm_target())
    ops = re.findall(r"^\s+([a-z0-9.]+)\s", lib.mod.inspect_source("s"), re.M)
    for op, n in (("smull", 48), ("smlal2", 48), ("sadalp", 48), ("smlal", 0)):
        assert ops.count(op) == n, op


INT8_OUT = [
    (S(1, 32, 14, 14, 32, (1, 1)), dict(), "relu6", "1x1, 14 wide (tiles in rows)"),
    (S(1, 16, 7, 7, 16, (1, 1)), dict(), "relu", "7x7 (flattened tiles, one of 1 pixel)"),
    (S(1, 32, 9, 9, 48, (3, 3), (2, 2), (1, 1, 1, 1)), dict(), "",
     "3x3 stride 2, 48 channels (three 16-channel groups); no activation: negatives"),
]


@pytest.mark.parametrize("spec,out,act,why", INT8_OUT, ids=[c[3] for c in INT8_OUT])
@pytest.mark.parametrize("target", ["x86", "cortex-a72"])
def test_widening_int8_conv_writing_int8_matches_oracle(spec, out, act, why, target, rng):
    """Written as the next kernel's input (int8 between layers): each pixel's 4 channels one
    word; rounded as the oracle (a float32 tie may go the other way), clamped at both ends,
    every byte written whatever the buffer held. On the host, and the aarch64 form (fcvtns)
    built."""
    q = quantize.QuantSpec(*spec.out_shape, depth=16, **out)
    ls = widening.LongSpec(spec, E(True, False, act), out=q)
    x = rng.normal(size=(1, spec.in_channels, spec.height, spec.width)).astype(np.float32)
    xq, sx = quantize.reference(ls.quant, x)
    cw = random_codebook_weight(rng, spec.weight_shape, 4)
    qcb, d = weights.quantize_codebook(cw.codebook, None, spec.out_channels, 63)
    wq = qcb[cw.indices()]
    b = rng.normal(size=spec.out_channels).astype(np.float32)
    y = sdot.reference_int8(spec, x, wq, d) + b[None, :, None, None]
    scale = np.float32(np.abs(y).max() / 127 * 0.7)  # 30 % of the range clamped
    want = sdot.reference_out(q, y / scale, bool(act))
    func = widening.schedule(widening.compute(ls), load_knobs(target)["q8l_conv2d"])
    if target != "x86":
        asm = tvm.compile(standalone(func),
                          target=get_profile(target).tvm_target()).mod.inspect_source("s")
        assert "fcvtns\t" in asm and "smull\t" in asm
        return
    args = [xq, np.array([sx]), decode.conv_order(decode.DecodeSpec.of(spec, 16), wq),
            (d / scale).astype(np.float32), (b / scale).astype(np.float32),
            np.full(q.out_shape, 77, np.int8)]
    check_int8_out(func, args, want, act, ls.name)


def test_widening_int8_conv_output_refusals():
    spec = INT8_OUT[0][0]
    q = quantize.QuantSpec(*spec.out_shape, depth=16)
    assert "residual" in widening.why_not_out(widening.LongSpec(spec, E(True, True)), q)
    assert "channel groups" in widening.why_not_out(
        widening.LongSpec(spec), quantize.QuantSpec(*spec.out_shape))
    assert "pads" in widening.why_not_out(
        widening.LongSpec(spec), quantize.QuantSpec(*spec.out_shape, (1, 1, 1, 1), depth=16))
    func = widening.compute(widening.LongSpec(spec, E(True, False, "relu6")))
    out8 = widening.KERNEL.int8_out
    assert out8.bound(func) == 6.0 and out8.why_not(func, q) == ""
    name, made = out8.make(func, q)
    assert name.endswith("_bias_relu6_to_" + q.name)
    assert widening.LongSpec.from_func(made).out == q


@pytest.mark.parametrize("spec", [S(1, 64, 9, 9, 32, (3, 3), padding=(1, 1, 1, 1), groups=4),
                                  S(1, 96, 10, 7, 48, (3, 3), (2, 2), (1, 1, 1, 1), groups=3)],
                         ids=["groups of 16 in, 8 out", "groups of 32 in, 16 out, stride 2"])
def test_grouped_widening_int8_conv_matches_the_int8_oracle(spec, rng):
    """Each output block of 4 sums its own group's 16-channel groups of the input."""
    ls = widening.LongSpec(spec)
    cw = random_codebook_weight(rng, spec.weight_shape, 4)
    q, d = weights.quantize_codebook(cw.codebook, None, spec.out_channels, ls.limit)
    x = rng.normal(size=(1, spec.in_channels, spec.height, spec.width)).astype(np.float32)
    xq, sx = quantize_on_host(ls.quant, x)
    w = decode.conv_order(decode.DecodeSpec.of(spec, widening.DEPTH), q[cw.indices()])
    got = run_kernel(widening.compute(ls), [xq, sx, w, d, np.zeros(spec.out_shape,
                                                                    np.float32)])
    assert rel_err(got, sdot.reference_int8(spec, x, q[cw.indices()], d)) < 1e-6
