"""The smmla int8 conv (kernels.int8.smmla): the int8 conv's compute on 8-channel groups,
against the int8 oracle on the host (its schedule as plain code), its int8 outputs, its
register tiles, and the smmla form built for an i8mm core. Running on the emulated
neoverse-n2: tests/device/test_emulated.py."""

import dataclasses
import re

import numpy as np
import pytest
import tvm

from dgms_tvm import strategies
from dgms_tvm.kernels import FAMILIES
from dgms_tvm.kernels.common import FP32_WEIGHT, standalone
from dgms_tvm.kernels.epilogue import Epilogue
from dgms_tvm.kernels.int8 import sdot
from dgms_tvm.kernels.int8 import smmla as int8_mmla
from dgms_tvm.kernels.int8.operands import decode, quantize
from dgms_tvm.schedules import load_knobs
from dgms_tvm.targets import get_profile
from tests.helpers import check_int8_out, rel_err, run_kernel
from tests.kernels.int8.test_sdot import CASES, S, _weights

HOST = get_profile("x86").tvm_target()
N2 = "neoverse-n2"


def _knobs(mmla=""):
    return dict(load_knobs(N2)[int8_mmla.FAMILY], mmla=mmla)


def quantized(spec, x):
    """(Xq, s_x) in the smmla conv's layout (8-channel groups), from the quantize kernel."""
    qs = quantize.QuantSpec.of(spec, depth=int8_mmla.DEPTH)
    lib = tvm.compile(standalone(quantize.compute(qs)), target=HOST)
    xq = tvm.runtime.tensor(np.zeros(qs.out_shape, qs.dtype))
    sx = tvm.runtime.tensor(np.zeros(1, np.float32))
    lib["main"](tvm.runtime.tensor(x), xq, sx)
    return xq.numpy(), sx.numpy()


def _input(spec, rng):
    return rng.normal(size=(spec.batch, spec.in_channels, spec.height, spec.width)).astype(
        np.float32)


@pytest.mark.parametrize("spec,why", CASES, ids=[c[1] for c in CASES])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_smmla_conv_matches_its_oracle(spec, why, bits, rng):
    """Strides, dilations, asymmetric padding, channel counts that fill no 8-channel group
    (3, 6) and output channels that fill no tile (12, 24): the weight decoded inside."""
    spec = dataclasses.replace(spec, bits=bits, scaled=bits in (3, 4))
    cw, q, d = _weights(spec, rng)
    x = _input(spec, rng)
    xq, sx = quantized(spec, x)
    func = int8_mmla.schedule(int8_mmla.compute(spec), _knobs())
    got = run_kernel(func, [xq, sx, cw.packed, q, d, np.zeros(spec.out_shape, np.float32)])
    assert rel_err(got, sdot.reference(spec, x, cw.indices(), q, d)) < 1e-6, spec.name


@pytest.mark.parametrize("bits", [2, 4, FP32_WEIGHT])
def test_predecoded_weight_and_extremes(bits, rng):
    """The weight decoded ahead in the smmla order ``[O/4, kh, kw, C8/8, 4, 8]`` (the decode
    kernel's, or a float32 weight per channel), with every input at +-127 against weights
    at +-127: the int32 sums exactly."""
    spec = S(1, 20, 9, 10, 12, (3, 3), padding=(1, 1, 1, 1), bits=bits)
    ds = decode.DecodeSpec.of(spec, int8_mmla.DEPTH)
    assert ds.shape == (3, 3, 3, 3, 4, 8)
    x = np.where(rng.random((1, 20, 9, 10)) < 0.5, -1.0, 1.0).astype(np.float32)
    wq = np.where(rng.random(spec.weight_shape) < 0.5, -127, 127).astype(np.int8)
    d = (rng.random(12) + 0.5).astype(np.float32)
    xq, sx = quantized(spec, x)
    assert set(np.unique(xq)) == {-127, 0, 127}
    func = int8_mmla.schedule(int8_mmla.compute(spec, predecoded=True), _knobs())
    got = run_kernel(func, [xq, sx, decode.conv_order(ds, wq), d,
                            np.zeros(spec.out_shape, np.float32)])
    np.testing.assert_array_equal(got, sdot.reference_int8(spec, x, wq, d))
    with pytest.raises(ValueError, match="signed"):
        int8_mmla.compute(spec, predecoded=True, unsigned=True)


@pytest.mark.parametrize("ep", [Epilogue(bias=True, act="relu"), Epilogue(True, True, "relu6")],
                         ids=lambda e: e.suffix)
def test_epilogue(ep, rng):
    spec = dataclasses.replace(CASES[1][0], bits=4, scaled=True)
    cw, q, d = _weights(spec, rng)
    x = _input(spec, rng)
    b = rng.normal(size=spec.out_channels).astype(np.float32)
    r = rng.normal(size=spec.out_shape).astype(np.float32) * 4
    name, func = FAMILIES[int8_mmla.FAMILY].fusion.make(int8_mmla.compute(spec), ep)
    assert name == int8_mmla.name(spec, epilogue=ep) and name.startswith("q8m_conv2d_")
    xq, sx = quantized(spec, x)
    got = run_kernel(int8_mmla.schedule(func, _knobs()),
                     [xq, sx, cw.packed, q, d, b, *([r] if ep.residual else []),
                      np.zeros(spec.out_shape, np.float32)])
    want = ep.numpy(sdot.reference(spec, x, cw.indices(), q, d), b, r)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("depth", [4, 8])
def test_writes_the_next_convs_int8_input(depth, rng):
    """int8 between layers: the outputs rounded, clamped and laid out in the next conv's
    groups of 4 (the sdot conv, the depthwise conv) or 8 (another smmla conv)."""
    spec = S(1, 16, 10, 12, 16, (3, 3), padding=(1, 1, 1, 1), bits=4)
    cw, q, d = _weights(spec, rng)
    x = _input(spec, rng)
    out = quantize.QuantSpec(1, 16, 10, 12, depth=depth)
    ep = Epilogue(bias=True, act="relu")
    base = int8_mmla.compute(spec, epilogue=ep)
    fam = FAMILIES[int8_mmla.FAMILY]
    assert fam.int8_out.why_not(base, out) == ""
    assert "layout" in fam.int8_out.why_not(base, dataclasses.replace(out, depth=16))
    name, func = fam.int8_out.make(base, out)
    assert name.endswith(out.name) and name.startswith("q8m_conv2d_")
    xq, sx = quantized(spec, x)
    b = rng.normal(size=16).astype(np.float32) * 30
    y = sdot.reference(spec, x, cw.indices(), q, d * 40) + b[None, :, None, None]
    want = sdot.reference_out(out, y, relu=True)
    check_int8_out(int8_mmla.schedule(func, _knobs()),
                   [xq, sx, cw.packed, q, d * 40, b, np.zeros(out.out_shape, np.int8)],
                   want, "relu", name)


def test_register_tiles():
    knobs = _knobs()
    for spec, _ in CASES:
        xt, ob = int8_mmla.register_tile(spec, knobs)
        assert xt % 2 == 0 and quantize.padded_out_w(spec) % xt == 0
        assert (spec.out_channels // 4) % ob == 0
        assert xt * ob + xt // 2 + 1 <= knobs["registers"] - 2
    # 8 pixels x 8 channels: 16 smmla on 4 input and 4 weight loads a step
    assert int8_mmla.register_tile(S(1, 64, 56, 56, 64, (3, 3), padding=(1,) * 4), knobs) \
        == (8, 2)
    # 28 columns: 4 pixels x 16 channels
    assert int8_mmla.register_tile(S(1, 128, 28, 28, 128, (3, 3), padding=(1,) * 4),
                                   knobs) == (4, 4)
    # 96 outputs: 8 x 12, unless written int8 in 8-channel groups (whole groups: 8 x 8)
    expand = S(1, 16, 112, 112, 96, (1, 1))
    assert int8_mmla.register_tile(expand, knobs) == (8, 3)
    assert int8_mmla.register_tile(expand, knobs, 8) == (8, 2)


def test_only_i8mm_cores_take_it():
    assert strategies.for_core(strategies.INT8_CONV, get_profile(N2)) == int8_mmla.FAMILY
    for target in ("neoverse-n1", "cortex-a72", "x86"):
        assert strategies.for_core(strategies.INT8_CONV, get_profile(target)) != int8_mmla.FAMILY
    assert load_knobs(N2)[int8_mmla.FAMILY]["mmla"] == "smmla"
    assert load_knobs("neoverse-n1")[int8_mmla.FAMILY]["mmla"] == ""
    assert "depthwise" in int8_mmla.supports(S(1, 16, 8, 8, 16, (3, 3), groups=16))


def test_grouped_smmla_conv_and_the_sdot_conv_for_groups_of_4(rng):
    """Groups of 8 input channels run on smmla; ResNeXt's groups of 4 would be padded to 8,
    so an i8mm core gives them the sdot conv (strategies.INT8_SDOT)."""
    spec = S(1, 32, 7, 9, 16, (3, 3), (1, 2), (1, 1, 1, 1), groups=4, bits=4)
    cw, q, d = _weights(spec, rng)
    x = _input(spec, rng)
    xq, sx = quantized(spec, x)
    func = int8_mmla.schedule(int8_mmla.compute(spec), _knobs())
    got = run_kernel(func, [xq, sx, cw.packed, q, d, np.zeros(spec.out_shape, np.float32)])
    assert rel_err(got, sdot.reference(spec, x, cw.indices(), q, d)) < 1e-6
    lib = tvm.compile(standalone(int8_mmla.schedule(int8_mmla.compute(spec),
                                                    load_knobs(N2)[int8_mmla.FAMILY])),
                      target=get_profile(N2).tvm_target())
    assert "smmla\t" in lib.mod.inspect_source("s")
    resnext = S(1, 128, 8, 8, 128, (3, 3), padding=(1, 1, 1, 1), groups=32)
    assert "8-channel blocks" in int8_mmla.supports(resnext)
    n2 = get_profile(N2)
    # (after the gathered stem's form, which takes the 3-channel stem first)
    assert strategies.conv2d_candidates("int8", n2)[:3] == (int8_mmla.FAMILY, "q8_im2col",
                                                            sdot.FAMILY)
    assert not sdot.supports(resnext, n2)
    assert strategies.conv2d_candidates("int8", get_profile("neoverse-n1")).count(
        sdot.FAMILY) == 1


def test_smmla_loop_on_an_i8mm_core():
    """Built for neoverse-n2: the reduction loop of a 64-channel 3x3 conv is smmla, with at
    most one load per two smmla and few other instructions (the floor: 32 multiply-adds an
    instruction)."""
    spec = S(1, 64, 56, 56, 64, (3, 3), padding=(1, 1, 1, 1))
    func = int8_mmla.schedule(int8_mmla.compute(spec, predecoded=True), _knobs("smmla"))
    asm = tvm.compile(standalone(func), target=get_profile(N2).tvm_target()).mod.inspect_source(
        "s")
    body = max(re.split(r"\n\.LBB\S+:", asm), key=lambda b: b.count("\tsmmla"))
    ops = re.findall(r"^\t([a-z][\w.]*)", body, re.M)
    smmla, loads = ops.count("smmla"), sum(o.startswith("ld") for o in ops)
    assert smmla == 2 * 9 * 16  # 2 groups of 8 channels x 9 taps x (8 pixels x 8 channels)
    assert loads <= smmla / 2 and len(ops) < 2 * smmla


def test_tuning_samples_the_tile(rng):
    """Sampled (a tuning design space): the tile's channel blocks and pixel pairs are two
    perfect-tile decisions (what MetaSchedule's tile-size mutator changes), first the hand
    tile's; another decision replays to another tile, and the kernel still matches the
    oracle."""
    spec = S(1, 16, 6, 8, 32, (3, 3), padding=(1, 1, 1, 1), bits=4)
    cw, q, d = _weights(spec, rng)
    x = _input(spec, rng)
    xq, sx = quantized(spec, x)
    want = sdot.reference(spec, x, cw.indices(), q, d)
    func = int8_mmla.compute(spec)
    assert FAMILIES[int8_mmla.FAMILY].searchable
    sch = tvm.s_tir.Schedule(func)
    int8_mmla.apply(sch, _knobs(), sample=True)
    insts = [i for i in sch.trace.insts if i.kind.name == "SamplePerfectTile"]
    cands = int8_mmla.tiles(spec, _knobs())
    assert len(insts) == 2 and (8, 4) in cands and (2, 1) in cands
    hand = int8_mmla.register_tile(spec, _knobs())
    assert [[int(v) for v in sch.trace.decisions[i]] for i in insts] == [
        [8 // hand[1], hand[1]], [4 // (hand[0] // 2), hand[0] // 2]]
    trace = sch.trace.with_decision(insts[0], [8, 1], True).with_decision(insts[1], [4, 1],
                                                                         True)
    other = tvm.s_tir.Schedule(func)
    trace.apply_to_schedule(other, remove_postproc=False)
    loops = other.get_loops(other.get_sblock("acc_update"))
    assert (2, 1) != hand and 1 in [int(lp.extent) for lp in map(other.get, loops)]
    got = run_kernel(other.mod["main"], [xq, sx, cw.packed, q, d,
                                         np.zeros(spec.out_shape, np.float32)])
    assert rel_err(got, want) < 1e-6


def test_tuning_searches_its_own_space_only():
    """TVM's generic schedules cannot reach smmla: the smmla conv's tuning task searches its
    own design space alone, where the exact conv's searches both."""
    from tvm.s_tir import meta_schedule as ms

    from dgms_tvm.kernels.fp32 import conv2d
    from dgms_tvm.tune import tuner

    spec = S(1, 16, 6, 8, 32, (3, 3), padding=(1, 1, 1, 1), bits=4)
    knobs = load_knobs(N2)
    own = tuner.space_of(tuner.Task("k", int8_mmla.compute(spec), 1, 0.0, [],
                                    int8_mmla.FAMILY), knobs)
    both = tuner.space_of(tuner.Task("k", conv2d.compute(spec), 1, 0.0, [], conv2d.FAMILY),
                          knobs)
    assert isinstance(own, ms.space_generator.ScheduleFn)
    assert isinstance(both, ms.space_generator.SpaceGeneratorUnion)
    assert not FAMILIES[int8_mmla.FAMILY].generic and FAMILIES[conv2d.FAMILY].generic
