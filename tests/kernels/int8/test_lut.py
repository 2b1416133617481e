"""The lookup-table int8 conv of 1- and 2-bit layers (kernels.int8.lut): exactly its oracle
(which models the tables' rounding) on the host over bits, shapes, strides, dilation,
padding, channel counts that fill no group of 16, tiles and epilogues, with the depth-16
quantize in front; at the extremes of its 16-bit sums; the tables' error against exact int8
sums; its aarch64 build (tbl / sadalp / sqrshrn). Running on the emulated Cortex-A53 /
A72: tests/device/test_emulated.py."""

import dataclasses
import re

import numpy as np
import pytest
import tvm

from dgms_tvm import strategies
from dgms_tvm.kernels.common import FP32_WEIGHT, standalone
from dgms_tvm.kernels.epilogue import Epilogue
from dgms_tvm.kernels.fp32 import conv2d
from dgms_tvm.kernels.int8 import lut, sdot
from dgms_tvm.kernels.int8.operands import quantize, weights
from dgms_tvm.schedules import load_knobs
from dgms_tvm.targets import get_profile
from tests.helpers import check_int8_out, random_codebook_weight, rel_err, run_kernel

S = conv2d.Conv2dSpec
E = Epilogue
HOST = get_profile("x86").tvm_target()
CASES = [
    (S(1, 16, 8, 8, 8, (3, 3), padding=(1, 1, 1, 1)), E(), {}, "3x3 same, 8 channels"),
    (S(1, 32, 9, 7, 16, (3, 3), (2, 2), (1, 1, 1, 1)), E(True, False, "relu"), {},
     "stride 2, odd sizes (flat tiles, a partial last one), bias + relu"),
    (S(2, 24, 6, 10, 32, (1, 1)), E(True, True, "relu6"), {},
     "24 channels (padded to 32), batch 2, 1x1, bias + residual + relu6"),
    (S(1, 40, 7, 7, 24, (3, 3), padding=(1, 1, 1, 1), dilation=(2, 2)), E(True, True, "relu"),
     {}, "40 channels (to 48), 24 out (tiles of 8), dilation 2, residual"),
    (S(1, 16, 11, 9, 16, (3, 5), (2, 3), (0, 2, 1, 1), (1, 2)), E(), {"pixels": 4},
     "3x5, mixed stride and dilation, asymmetric padding, 4-pixel tiles"),
    (S(1, 32, 9, 11, 16, (1, 1), (2, 2)), E(True), {},
     "1x1 stride 2 (tables only where the stride lands), odd sizes"),
    (S(1, 64, 6, 6, 64, (3, 3), padding=(1, 1, 1, 1)), E(True, False, "relu"),
     {"pixels": 4, "blocks": 2}, "64 channels (a flush a window row), 4 x 16 tiles"),
]


def _quantized(spec, x):
    qs = lut.LutSpec.of(spec).quant
    lib = tvm.compile(standalone(quantize.compute(qs)), target=HOST)
    xq = tvm.runtime.tensor(np.zeros(qs.out_shape, qs.dtype))
    sx = tvm.runtime.tensor(np.zeros(1, np.float32))
    lib["main"](tvm.runtime.tensor(x), xq, sx)
    return xq.numpy(), sx.numpy()


def _run(ls, x, idx, qcb, d, b=None, r=None, target="x86"):
    """Quantize (depth 16) -> lookup-table conv, on the host."""
    xq, sx = _quantized(ls.conv, x)
    ep = ls.epilogue
    extra = ([b] if ep.bias else []) + ([r] if ep.residual else [])
    func = lut.schedule(lut.compute(ls), load_knobs(target)["q8t_conv2d"])
    return run_kernel(func, [xq, sx, lut.pack(ls, idx), lut.entries(ls, qcb), d,
                             *extra, np.zeros(ls.conv.out_shape, np.float32)])


def _codebook(rng, bits):
    lim = lut.limit(bits)
    return np.concatenate([[0], rng.integers(-lim, lim + 1, (1 << bits) - 1)]).astype(np.int8)


@pytest.mark.parametrize("bits", [1, 2])
@pytest.mark.parametrize("spec,ep,tile,why", CASES, ids=[c[3] for c in CASES])
def test_lookup_table_conv_matches_its_oracle(spec, ep, tile, why, bits, rng):
    spec = dataclasses.replace(spec, bits=bits)
    ls = dataclasses.replace(lut.LutSpec.of(spec, epilogue=ep), **tile)
    x = rng.normal(size=(spec.batch, spec.in_channels, spec.height, spec.width))
    x = x.astype(np.float32)
    idx = rng.integers(0, 1 << bits, size=spec.weight_shape)
    qcb = _codebook(rng, bits)
    d = rng.uniform(0.5, 1.5, spec.out_channels).astype(np.float32)
    b = rng.normal(size=spec.out_channels).astype(np.float32)
    r = rng.normal(size=spec.out_shape).astype(np.float32)
    got = _run(ls, x, idx, qcb, d, b, r)
    want = ep.numpy(lut.reference(ls, x, idx, qcb, d), b, r)
    assert rel_err(got, want) < 1e-6, ls.name


@pytest.mark.parametrize("bits,c", [(2, 512), (2, 1024), (1, 1024)])
@pytest.mark.parametrize("sign", [1, -1])
def test_lookup_table_conv_at_the_extremes_of_its_sums(bits, c, sign):
    """Every input at 127 and every weight on the codebook's largest entry (+-limit): each
    table entry is +-127 and each 16-bit lane takes its most steps before it is widened
    (128 of +-254: 512 channels at 2 bits are one tap's; 1024 split a tap in two)."""
    spec = S(1, c, 2, 2, 16, (1, 1), bits=bits)
    ls = lut.LutSpec.of(spec)
    assert lut._flushes(ls) == ("window" if ls.tables // 2 <= 128 else "chunk")  # (1x1)
    x = np.ones((1, c, 2, 2), np.float32)
    qcb = np.zeros(1 << bits, np.int8)
    qcb[-1] = sign * lut.limit(bits)
    idx = np.full(spec.weight_shape, (1 << bits) - 1)
    d = np.ones(16, np.float32)
    got = _run(ls, x, idx, qcb, d)
    tab = (lut.group(bits) * 127 * int(qcb[-1]) + 128) >> 8
    assert abs(tab) >= 126  # (2 bits: 2 x 127 x 127 -> 126)
    assert np.array_equal(got, np.full(spec.out_shape, tab * ls.tables * d[0] / 127,
                                       np.float32)), got.ravel()[:4]


@pytest.mark.parametrize("bits", [1, 2])
def test_extreme_codebooks(bits, rng):
    """One huge entry beside tiny ones, and all entries equal: the kernel is its oracle, and
    the tables' rounding stays within its bound of the exact int8 sums."""
    spec = S(1, 32, 6, 6, 16, (3, 3), padding=(1, 1, 1, 1), bits=bits)
    ls = lut.LutSpec.of(spec)
    x = rng.normal(size=(1, 32, 6, 6)).astype(np.float32)
    idx = rng.integers(0, 1 << bits, size=spec.weight_shape)
    k = (1 << bits) - 1
    for cb in (np.array([0, 1e4, 1e-3, -1e-3][:k + 1]), np.array([0] + [0.5] * k)):
        qcb, d = weights.quantize_codebook(cb.astype(np.float32), None, 16,
                                           lut.limit(bits), indices=idx)
        d = (d * 256).astype(np.float32)
        got = _run(ls, x, idx, qcb, d)
        assert rel_err(got, lut.reference(ls, x, idx, qcb, d)) < 1e-6
        exact = sdot.reference_int8(spec, x, qcb[idx], d / 256)
        assert rel_err(got, exact) < 0.1


@pytest.mark.parametrize("bits,bound", [(2, 0.05), (1, 0.05)])
def test_table_rounding_error_against_exact_int8_sums(bits, bound, rng):
    """The error the tables add, on a DGMS-like layer (codebook entries at the int8 scale the
    lowering picks, a third of the weights zero), relative to the exact int8 sums: the
    figure docs/log.md states for whole models starts here."""
    spec = S(1, 64, 8, 8, 32, (3, 3), padding=(1, 1, 1, 1), bits=bits)
    ls = lut.LutSpec.of(spec)
    cw = random_codebook_weight(rng, spec.weight_shape, bits)
    idx = cw.indices()
    qcb, d = weights.quantize_codebook(cw.codebook, None, 32, lut.limit(bits),
                                       indices=idx)
    x = np.maximum(rng.normal(size=(1, 64, 8, 8)), 0).astype(np.float32)  # after a relu
    got = lut.reference(ls, x, idx, qcb, (d * 256).astype(np.float32))
    exact = sdot.reference_int8(spec, x, qcb[idx], d)
    err = rel_err(got, exact)
    assert 0 < err < bound, err
    assert rel_err(got, conv2d.reference(spec, x, cw.dense())) < bound + 0.01


INT8_OUT = [
    (S(1, 32, 14, 14, 32, (1, 1), bits=2), "relu6", "1x1, 14 wide (tiles in rows)"),
    (S(1, 16, 7, 7, 16, (3, 3), padding=(1, 1, 1, 1), bits=1), "relu",
     "7x7 (flattened tiles, a partial one), 1 bit"),
    (S(1, 32, 9, 9, 48, (3, 3), (2, 2), (1, 1, 1, 1), bits=2), "",
     "3x3 stride 2, 48 channels (tiles of 16); no activation: negatives"),
]


@pytest.mark.parametrize("spec,act,why", INT8_OUT, ids=[c[2] for c in INT8_OUT])
def test_lookup_table_conv_writing_int8_matches_oracle(spec, act, why, rng):
    """Written as the next kernel's input (int8 between layers), as the widening conv does:
    rounded as the oracle (a float32 tie may go the other way), clamped at both ends, every
    byte written whatever the buffer held."""
    q = quantize.QuantSpec(*spec.out_shape, depth=16)
    ls = lut.LutSpec.of(spec, epilogue=E(True, False, act), out=q)
    x = rng.normal(size=(1, spec.in_channels, spec.height, spec.width)).astype(np.float32)
    idx = rng.integers(0, 1 << spec.bits, size=spec.weight_shape)
    qcb = _codebook(rng, spec.bits)
    d = rng.uniform(0.5, 1.5, spec.out_channels).astype(np.float32)
    b = rng.normal(size=spec.out_channels).astype(np.float32)
    y = lut.reference(ls, x, idx, qcb, d) + b[None, :, None, None]
    scale = np.float32(np.abs(y).max() / 127 * 0.7)  # 30 % of the range clamped
    want = sdot.reference_out(q, y / scale, bool(act))
    func = lut.schedule(lut.compute(ls), load_knobs("x86")["q8t_conv2d"])
    xq, sx = _quantized(spec, x)
    args = [xq, sx, lut.pack(ls, idx), lut.entries(ls, qcb),
            (d / scale).astype(np.float32), (b / scale).astype(np.float32),
            np.full(q.out_shape, 77, np.int8)]
    check_int8_out(func, args, want, act, ls.name)
    assert "residual" in lut.why_not_out(
        lut.LutSpec.of(spec, epilogue=E(True, True)), q)


def test_the_packed_operands():
    """Table indices: digit ``t`` of a group's index is its channel ``t``'s codebook index;
    lane ``2m + h`` of a vector is channel ``m``, group ``2k + h``, into 32 bytes."""
    spec = S(1, 16, 4, 4, 8, (1, 1), bits=2)
    ls = lut.LutSpec.of(spec)
    assert (ls.blocks, ls.tables, ls.weight_shape) == (1, 8, (1, 1, 1, 4, 1, 16))
    idx = np.zeros((8, 16, 1, 1), np.int64)
    idx[3, 5, 0, 0] = 2  # channel 5: group 2 (channels 4, 5), digit 1 -> index 2 << 2
    w = lut.pack(ls, idx)
    assert w[0, 0, 0, 1, 0, 6] == 8 and w[0, 0, 0, 1, 0, 7] == 16
    assert int(w.sum()) == 8 + 16 * 8 * 4  # every odd lane points into the second table
    cv = lut.entries(ls, np.array([0, 3, -5, 7]))
    assert cv.shape == (2, 16) and cv[0, 6] == -5 and cv[1, 6] == 3 and cv[1, 15] == 7
    one = lut.entries(lut.LutSpec.of(S(1, 16, 4, 4, 8, (1, 1), bits=1)),
                      np.array([0, 64]))
    assert one.shape == (4, 16) and list(one[:, 0b1010]) == [0, 64, 0, 64]
    assert (lut.limit(1), lut.limit(2)) == (64, 127)


def test_layers_the_lookup_table_conv_does_not_take():
    assert "4-bit" in lut.supports(S(1, 32, 8, 8, 16, (3, 3), bits=4))
    assert "no codebook" in lut.supports(S(1, 32, 8, 8, 16, (3, 3), bits=FP32_WEIGHT))
    assert "groups" in lut.supports(S(1, 16, 8, 8, 16, (3, 3), groups=16, bits=2))
    assert "output channels" in lut.supports(S(1, 16, 8, 8, 12, (1, 1), bits=2))
    assert "input channels" in lut.supports(S(1, 3, 8, 8, 16, (7, 7), bits=2))
    assert not lut.supports(S(1, 24, 8, 8, 128, (1, 1), bits=1))
    # too few lookups per table: a 1x1 conv of 96 outputs (12), a 3x3 of 8 (9)
    assert "read 12 times" in lut.supports(S(1, 32, 8, 8, 96, (1, 1), bits=2))
    assert "read 9 times" in lut.supports(S(1, 32, 8, 8, 8, (3, 3), bits=2))
    assert not lut.supports(S(1, 32, 8, 8, 64, (3, 3), (2, 2), bits=2))  # 18
    assert not lut.fits(S(1, 32, 8, 8, 8, (3, 3), bits=2))  # it can: tests build it
    assert lut.LutSpec.of(S(1, 16, 8, 8, 24, (1, 1), bits=2)).blocks == 1
    assert lut.LutSpec.of(S(1, 16, 8, 8, 48, (1, 1), bits=2)).blocks == 2
    a72, a53, n1, x86 = (get_profile(t) for t in ("cortex-a72", "cortex-a53", "neoverse-n1",
                                                  "x86"))
    assert [strategies.for_core(strategies.INT8_LUT, p) for p in (a72, a53, n1, x86)] == [
        lut.FAMILY, lut.FAMILY, "", ""]
    assert strategies.conv2d_candidates("int8", a72)[0] == lut.FAMILY
    assert lut.FAMILY not in strategies.conv2d_candidates("int8-full", a72)


def test_lookup_table_conv_builds_to_tbl_and_sadalp_on_aarch64():
    """Per step (2 tables of 16 entries) of a tile of 2 pixels x 32 channels: 8 ``tbl`` of
    two registers and 8 ``sadalp``, two steps unrolled; the tables made with ``smull`` /
    ``smlal`` and rounded by ``sqrshrn``."""
    spec = S(1, 64, 8, 8, 64, (3, 3), padding=(1, 1, 1, 1), bits=2)
    func = lut.schedule(lut.compute(lut.LutSpec.of(spec)),
                        load_knobs("cortex-a72")["q8t_conv2d"])
    asm = tvm.compile(standalone(func),
                      target=get_profile("cortex-a72").tvm_target()).mod.inspect_source("s")
    loops = [b for b in re.split(r"\n\.LBB\w+:", asm) if re.search(r"\btbl\s", b)]
    inner = min(loops, key=len)
    ops = re.findall(r"^\s+([a-z0-9.]+)\s", inner, re.M)
    assert ops.count("tbl") == ops.count("sadalp") == 16
    assert len(ops) <= 50, ops  # 32 of them arithmetic: loads, addresses, the loop
    assert re.search(r"tbl\tv\d+\.16b, \{ v\d+\.16b, v\d+\.16b \}", inner)
    assert "sqrshrn\t" in asm and "smull\t" in asm and "sqrshrn2\t" in asm


def test_the_tile_comes_from_the_core_class_schedule_file():
    """2 pixels x 32 channels on the A72 (aarch64.json), x 16 on the in-order A53
    (cortex-a53.json); blocks rounded down to what the output channels fill. The lowering
    fixes it (the weight's layout follows it); the schedule keeps it."""
    for o, core, want in ((64, "cortex-a72", (2, 4)), (64, "cortex-a53", (2, 2)),
                          (48, "cortex-a72", (2, 2)), (24, "cortex-a72", (2, 1))):
        spec = S(1, 32, 8, 8, o, (3, 3), padding=(1, 1, 1, 1), bits=2)
        knobs = load_knobs(core)["q8t_conv2d"]
        ls = lut.LutSpec.of(spec, knobs["tile"])
        assert (ls.pixels, ls.blocks) == want, (o, core)
        got = lut.LutSpec.from_func(lut.schedule(lut.compute(ls), knobs))
        assert (got.pixels, got.blocks) == want and got.neon
        assert lut.pack(ls, np.zeros(spec.weight_shape, np.int64)).shape == \
            ls.weight_shape == (o // (8 * want[1]), 3, 3, 8, want[1], 16)
