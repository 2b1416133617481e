"""The int8 strategy of the codebook conv2d (kernels.int8.sdot): its NumPy oracle against the
exact conv, the kernels (quantize + int8 conv) against the oracle on the host, scheduled and
unscheduled, and the sdot form built for a dotprod core. Running on emulated cores: see
tests/device/test_emulated.py."""

import dataclasses

import numpy as np
import pytest
import tvm

from dgms_tvm.kernels.common import FP32_WEIGHT, standalone
from dgms_tvm.kernels.epilogue import Epilogue
from dgms_tvm.kernels.fp32 import conv2d
from dgms_tvm.kernels.int8 import sdot
from dgms_tvm.kernels.int8.operands import decode, quantize, weights
from dgms_tvm.schedules import load_knobs
from dgms_tvm.targets import get_profile
from tests.helpers import NEEDS_VNNI, random_codebook_weight, rel_err, run_kernel

S = conv2d.Conv2dSpec
CASES = [
    (S(1, 16, 10, 10, 32, (3, 3), padding=(1, 1, 1, 1)), "3x3 same"),
    (S(1, 16, 9, 11, 24, (3, 3), (2, 2), (1, 1, 1, 1)), "stride 2, odd sizes"),
    (S(2, 8, 8, 8, 16, (1, 1)), "1x1, batch 2"),
    (S(1, 8, 9, 9, 8, (1, 1), (2, 2)), "1x1 stride 2"),
    (S(1, 8, 12, 12, 8, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2)), "dilation 2"),
    (S(1, 6, 11, 9, 12, (3, 3), (2, 1), (1, 0, 2, 1), (2, 1)), "6 channels (padded to 8), "
     "asymmetric padding, mixed stride and dilation"),
    (S(1, 3, 15, 15, 8, (5, 5), (3, 3), (2, 2, 2, 2)), "3 channels, 5x5 stride 3"),
    (S(1, 16, 7, 7, 64, (3, 3), (1, 1), (1, 1, 1, 1)), "7 wide, 64 channels"),
]


def _weights(spec, rng):
    cw = random_codebook_weight(rng, spec.weight_shape, spec.bits, scaled=spec.scaled)
    q, d = weights.quantize_codebook(cw.codebook, cw.scale, spec.out_channels)
    return cw, q, d


def quantize_on_host(qs, x):
    """(Xq, s_x) from the quantize kernel of ``qs`` run on this host."""
    lib = tvm.compile(standalone(quantize.compute(qs)), target=get_profile("x86").tvm_target())
    xq = tvm.runtime.tensor(np.zeros(qs.out_shape, qs.dtype))
    sx = tvm.runtime.tensor(np.zeros(1, np.float32))
    lib["main"](tvm.runtime.tensor(x), xq, sx)
    return xq.numpy(), sx.numpy()


def run_int8(spec, x, cw, q, d, knobs=None, run=run_kernel, unsigned=False):
    """Quantize kernel then int8 conv kernel (hand-scheduled with ``knobs``, else
    unscheduled); ``unsigned``: the +128 uint8 input form with its correction."""
    qs = quantize.QuantSpec.of(spec, unsigned)
    qf, cf = quantize.compute(qs), sdot.compute(spec, unsigned=unsigned)
    if knobs is not None:
        qf, cf = quantize.schedule(qf, {}), sdot.schedule(cf, knobs)
    lib = tvm.compile(standalone(qf), target=get_profile("x86").tvm_target())
    xq = tvm.runtime.tensor(np.zeros(qs.out_shape, qs.dtype))
    sx = tvm.runtime.tensor(np.zeros(1, np.float32))
    lib["main"](tvm.runtime.tensor(x), xq, sx)
    corr = [weights.correction(cw.indices(), q)] if unsigned else []
    return run(cf, [xq.numpy(), sx.numpy(), cw.packed, q, d, *corr,
                    np.zeros(spec.out_shape, np.float32)])


@pytest.mark.parametrize("spec,why", CASES, ids=[c[1] for c in CASES])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_int8_conv2d_matches_its_oracle(spec, why, bits, rng):
    spec = dataclasses.replace(spec, bits=bits, scaled=bits in (3, 4))
    cw, q, d = _weights(spec, rng)
    x = rng.normal(size=(spec.batch, spec.in_channels, spec.height, spec.width))
    x = x.astype(np.float32)
    want = sdot.reference(spec, x, cw.indices(), q, d)
    got = run_int8(spec, x, cw, q, d, load_knobs("x86")["q8_conv2d"])
    assert got.shape == want.shape
    assert rel_err(got, want) < 1e-6, spec.name
    # ... and the oracle is the exact conv up to the int8 rounding of inputs and codebook.
    assert rel_err(want, conv2d.reference(spec, x, cw.dense())) < 0.03


HOST = get_profile("x86").tvm_target()


@pytest.mark.parametrize("spec,why", CASES, ids=[c[1] for c in CASES])
@pytest.mark.parametrize("dot", [pytest.param("vnni", marks=NEEDS_VNNI), "none"])
def test_unsigned_int8_conv2d_matches_its_oracle(spec, why, dot, rng):
    """The +128 input form (x86): the VNNI micro-kernel (hosts with VNNI only), and the generic
    code on the same operands on any host; the same integers as the signed form."""
    spec = dataclasses.replace(spec, bits=4, scaled=True)
    cw, q, d = _weights(spec, rng)
    x = rng.normal(size=(spec.batch, spec.in_channels, spec.height, spec.width))
    x = x.astype(np.float32)
    knobs = dict(load_knobs("x86")["q8_conv2d"], dot=dot)
    got = run_int8(spec, x, cw, q, d, knobs, unsigned=True)
    assert rel_err(got, sdot.reference(spec, x, cw.indices(), q, d)) < 1e-6, spec.name


@NEEDS_VNNI
def test_vnni_micro_kernel_is_used():
    spec = S(1, 16, 8, 8, 16, (3, 3), padding=(1, 1, 1, 1))
    knobs = dict(load_knobs("x86")["q8_conv2d"], dot="vnni")
    func = sdot.schedule(sdot.compute(spec, unsigned=True), knobs)
    lib = tvm.compile(standalone(func), target=HOST)
    assert "vpdpbusd" in lib.mod.inspect_source("s")


@pytest.mark.parametrize("spec,why", CASES[:3], ids=[c[1] for c in CASES[:3]])
def test_unscheduled_int8_conv2d_matches_its_oracle(spec, why, rng):
    cw, q, d = _weights(spec, rng)
    x = rng.normal(size=(spec.batch, spec.in_channels, spec.height, spec.width))
    x = x.astype(np.float32)
    assert rel_err(run_int8(spec, x, cw, q, d), sdot.reference(spec, x, cw.indices(), q, d)) \
        < 1e-6


@pytest.mark.parametrize("limit", [63, 127])
def test_codebook_scale_rounds_no_worse_than_max_abs(limit, rng):
    """Over random 2- and 4-bit codebooks and usage counts (some entries unused): the scale
    chosen rounds the used entries, weighed by use, no worse than max|codebook| / limit, and
    keeps every entry within +-limit."""
    for bits in (2, 4) * 20:
        cb = np.concatenate([[0.0], rng.normal(size=(1 << bits) - 1)]).astype(np.float32)
        counts = rng.integers(0, 50, size=len(cb))
        idx = np.repeat(np.arange(len(cb)), counts)
        q, _ = weights.quantize_codebook(cb, None, 1, limit, indices=idx)
        s = weights.codebook_scale(cb, limit, counts)
        top = float(np.abs(cb).max()) / limit

        def err(scale):
            r = np.clip(np.rint(cb / scale), -limit, limit) * scale
            return float(((cb - r) ** 2 * counts).sum())

        assert np.abs(q).max() <= limit and q[0] == 0
        assert err(s) <= err(top) + 1e-12
        np.testing.assert_array_equal(q, np.clip(np.rint(cb / s), -limit, limit))
    assert weights.codebook_scale(np.zeros(4), 127) == 1.0


def test_quantization_details(rng):
    # The codebook's zero stays exactly zero; its scale is the one that rounds its entries
    # best (here every entry a multiple of 0.1 / 16: exact, where max-abs's 0.8 / 127 is not).
    cb = np.array([0.0, -0.2, 0.1, 0.8], np.float32)
    q, d = weights.quantize_codebook(cb, np.array([2.0, -1.0], np.float32), 2)
    s = weights.codebook_scale(cb, 127)
    assert q.dtype == np.int8 and q[0] == 0 and np.abs(q).max() <= 127
    np.testing.assert_allclose(q * s, cb, atol=1e-6)
    np.testing.assert_allclose(d, [2 * s, -s], rtol=1e-6)
    # Inputs round to nearest even, as the kernel's round does.
    xq, sx = quantize.quantize_input(np.array([1.0, 0.5 / 127 * 3, -1.0], np.float32))
    assert list(xq) == [127, 2, -127] and sx == np.float32(1 / 127)
    # An all-zero input quantizes to zero instead of dividing by zero.
    spec = CASES[0][0]
    cw, q, d = _weights(spec, rng)
    x = np.zeros((1, 16, 10, 10), np.float32)
    got = run_int8(spec, x, cw, q, d, load_knobs("x86")["q8_conv2d"])
    assert np.all(got == 0) and np.all(np.isfinite(got))


@pytest.mark.parametrize("bits,shape", [(4, (64, 64, 3, 3)), (2, (16, 3, 7, 7)),
                                        (1, (32, 8, 1, 1))])
def test_decode_kernel_and_predecoded_conv(bits, shape, rng):
    o, c, kh, kw = shape
    ds = decode.DecodeSpec(o, c, (kh, kw), bits)
    assert ds.supported()
    idx = rng.integers(0, 1 << bits, size=shape)
    q = np.concatenate([[0], rng.integers(-127, 128, size=(1 << bits) - 1)]).astype(np.int8)
    c4 = ds.shape[3] * 4
    full = np.zeros((o, c4, kh, kw), np.int64)
    full[:, :c] = idx
    want = q[full].reshape(o // 4, 4, c4 // 4, 4, kh, kw).transpose(0, 4, 5, 2, 1, 3)
    # On the host: one load per weight, and (x86) one pshufb per 16 weights.
    for lookup in ("scalar", "pshufb"):
        host = tvm.compile(standalone(decode.compute(ds, lookup)), target=HOST)
        w = tvm.runtime.tensor(np.zeros(ds.shape, np.int8))
        host["main"](tvm.runtime.tensor(decode.pack_for_decode(ds, idx)),
                     tvm.runtime.tensor(weights.q16(q)),
                     tvm.runtime.tensor(np.zeros(1, np.float32)), w)
        np.testing.assert_array_equal(w.numpy(), want, err_msg=lookup)
        if lookup == "pshufb":
            assert "pshufb" in host.mod.inspect_source("s")
    # The NEON form: one tbl per 16 weights.
    lib = tvm.compile(standalone(decode.compute(ds, "tbl")),
                      target=get_profile("cortex-a72").tvm_target())
    assert "tbl\t" in lib.mod.inspect_source("s")
    # The conv reading the decoded weight equals the one decoding inside.
    spec = S(1, c, 6, 6, o, (kh, kw), padding=(kh // 2,) * 4, bits=bits)
    x = rng.normal(size=(1, c, 6, 6)).astype(np.float32)
    d = (rng.random(o) + 0.5).astype(np.float32)
    cw = random_codebook_weight(rng, spec.weight_shape, bits)
    qs = quantize.QuantSpec.of(spec)
    ql = tvm.compile(standalone(quantize.compute(qs)), target=get_profile("x86").tvm_target())
    xq = tvm.runtime.tensor(np.zeros(qs.out_shape, np.int8))
    sx = tvm.runtime.tensor(np.zeros(1, np.float32))
    ql["main"](tvm.runtime.tensor(x), xq, sx)
    knobs = load_knobs("x86")["q8_conv2d"]
    inside = run_kernel(sdot.schedule(sdot.compute(spec), knobs),
                        [xq.numpy(), sx.numpy(), cw.packed, q, d,
                         np.zeros(spec.out_shape, np.float32)])
    w2 = tvm.runtime.tensor(np.zeros(ds.shape, np.int8))
    host["main"](tvm.runtime.tensor(decode.pack_for_decode(ds, cw.indices())),
                 tvm.runtime.tensor(weights.q16(q)), sx, w2)
    pre = run_kernel(sdot.schedule(sdot.compute(spec, predecoded=True), knobs),
                     [xq.numpy(), sx.numpy(), w2.numpy(), d,
                      np.zeros(spec.out_shape, np.float32)])
    np.testing.assert_array_equal(pre, inside)
    assert rel_err(pre, sdot.reference(spec, x, cw.indices(), q, d)) < 1e-6


W8_CASES = [(S(1, 3, 19, 17, 16, (7, 7), (2, 2), (3, 3, 3, 3)), "stem: 3 channels, 7x7 s2"),
            (S(1, 8, 9, 9, 12, (3, 3), padding=(1, 1, 1, 1)), "3x3 same")]


@pytest.mark.parametrize("spec,why", W8_CASES, ids=[c[1] for c in W8_CASES])
@pytest.mark.parametrize("dot", [pytest.param("vnni", marks=NEEDS_VNNI), "none"])
def test_float32_weight_quantized_per_channel(spec, why, dot, rng):
    """A conv that is no codebook (the stem) in an int8 build: its weight as int8 per output
    channel, tiled in the conv's order, through the predecoded conv (signed and +128 forms)."""
    spec = dataclasses.replace(spec, bits=FP32_WEIGHT)
    w = rng.normal(size=spec.weight_shape).astype(np.float32)
    w[1] *= 1e-3  # a channel of small weights keeps its precision: the scale is per channel
    wq, d = weights.quantize_weight(w)
    assert wq.dtype == np.int8 and np.abs(wq).max(axis=(1, 2, 3)).tolist() == [127] * len(d)
    err = np.abs(wq * d[:, None, None, None] - w).max(axis=(1, 2, 3))
    assert np.all(err <= d * np.float32(0.5 + 1e-5))
    name = sdot.name(spec, predecoded=True, unsigned=dot == "vnni")
    assert name.startswith("q8_conv2d_n1_c") and "_w8_pre" in name
    with pytest.raises(ValueError, match="predecoded"):
        sdot.compute(spec)
    x = rng.normal(size=(spec.batch, spec.in_channels, spec.height, spec.width))
    x = x.astype(np.float32)
    unsigned = dot == "vnni"
    xq, sx = quantize_on_host(quantize.QuantSpec.of(spec, unsigned), x)
    knobs = dict(load_knobs("x86")["q8_conv2d"], dot=dot)
    func = sdot.schedule(sdot.compute(spec, predecoded=True, unsigned=unsigned), knobs)
    tiled = decode.conv_order(decode.DecodeSpec.of(spec), wq)
    corr = [weights.weight_correction(wq)] if unsigned else []
    got = run_kernel(func, [xq, sx, tiled, d, *corr,
                            np.zeros(spec.out_shape, np.float32)])
    assert rel_err(got, sdot.reference_int8(spec, x, wq, d)) < 1e-6, spec.name
    # ... and the oracle is the float32 conv up to the int8 rounding of inputs and weights.
    assert rel_err(got, conv2d.reference(spec, x, w)) < 0.03


EPILOGUES = [Epilogue(bias=True, act="relu"), Epilogue(True, True, "relu"),
             Epilogue(bias=True, act="relu6"), Epilogue(residual=True)]


@pytest.mark.parametrize("ep", EPILOGUES, ids=lambda e: e.suffix)
@pytest.mark.parametrize("dot", [pytest.param("vnni", marks=NEEDS_VNNI), "none"])
def test_epilogue_in_the_dequantize_step(ep, dot, rng):
    """BatchNorm shift / bias, residual and relu / relu6 applied as the outputs are
    dequantized: the oracle's float32 operations in the same order."""
    spec = dataclasses.replace(CASES[1][0], bits=4, scaled=True)  # stride 2, odd sizes
    cw, q, d = _weights(spec, rng)
    x = rng.normal(size=(spec.batch, spec.in_channels, spec.height, spec.width))
    x = x.astype(np.float32)
    b = rng.normal(size=spec.out_channels).astype(np.float32)
    r = rng.normal(size=spec.out_shape).astype(np.float32) * 4
    unsigned = dot == "vnni"
    assert sdot.name(spec, True, unsigned, ep).endswith(ep.suffix) and ep.suffix
    xq, sx = quantize_on_host(quantize.QuantSpec.of(spec, unsigned), x)
    knobs = dict(load_knobs("x86")["q8_conv2d"], dot=dot)
    func = sdot.schedule(sdot.compute(spec, unsigned=unsigned, epilogue=ep), knobs)
    extra = ([weights.correction(cw.indices(), q)] if unsigned else []) + \
        ([b] if ep.bias else []) + ([r] if ep.residual else [])
    got = run_kernel(func, [xq, sx, cw.packed, q, d, *extra,
                            np.zeros(spec.out_shape, np.float32)])
    want = ep.numpy(sdot.reference(spec, x, cw.indices(), q, d), b, r)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if ep.act:
        assert (got == 0).any() and got.min() == 0
    if ep.act == "relu6":
        assert got.max() == 6


def test_layers_the_int8_kernel_does_not_take():
    assert "depthwise" in sdot.supports(S(1, 16, 8, 8, 16, (3, 3), groups=16))
    assert "multiple of 4" in sdot.supports(S(1, 16, 8, 8, 10, (1, 1)))
    with pytest.raises(ValueError):
        sdot.compute(S(1, 16, 8, 8, 10, (1, 1)))


def test_register_tile_fits_the_registers():
    for target in ("neoverse-n1", "cortex-a72"):
        knobs = load_knobs(target)["q8_conv2d"]
        for spec, _ in CASES:
            xt, ob = sdot.register_tile(spec, knobs)
            assert quantize.padded_out_w(spec) % xt == 0 and (spec.out_channels // 4) % ob == 0
            per = 4 if sdot.quad(spec, knobs) else 1  # pixels per input load
            assert xt % per == 0 and xt * ob + xt // per + 1 <= knobs["registers"] - 2
    n1 = load_knobs("neoverse-n1")["q8_conv2d"]
    # A dotprod core: 4-pixel loads, 8 columns x 8 channels.
    same = S(1, 64, 56, 56, 64, (3, 3), padding=(1, 1, 1, 1))
    assert sdot.quad(same, n1) and sdot.register_tile(same, n1) == (8, 2)
    # 7 columns are computed as 8 (the 8th reads zeros and is not written).
    seven = S(1, 512, 7, 7, 512, (3, 3), padding=(1, 1, 1, 1))
    assert quantize.padded_out_w(seven) == 8 and sdot.register_tile(seven, n1) == (8, 2)
    # Stride 2: 4 pixels per load too (the input deinterleaved by column parity).
    s2 = S(1, 64, 56, 56, 128, (3, 3), (2, 2), (1, 1, 1, 1))
    assert sdot.quad(s2, n1) and sdot.register_tile(s2, n1) == (4, 4)
    assert quantize.QuantSpec.of(s2).phases == 2
    assert not sdot.quad(s2, load_knobs("cortex-a72")["q8_conv2d"])


def test_quantize_vector_runs():
    """Runs of whole vectors where the width allows, else the longest that splits it; the
    blocks where none does (an odd width at column stride 2)."""
    assert quantize._vector_run(quantize.QuantSpec(1, 64, 56, 56)) == 8
    assert quantize._vector_run(quantize.QuantSpec(1, 64, 14, 14)) == 14
    assert quantize._vector_run(quantize.QuantSpec(1, 3, 224, 224, phases=2)) == 16
    assert quantize._vector_run(quantize.QuantSpec(1, 8, 9, 9, phases=2)) == 0
    # 16-channel groups (the widening conv): runs of up to 64 bytes, 128 where none fits
    assert quantize._vector_run(quantize.QuantSpec(1, 64, 56, 56, depth=16)) == 4
    assert quantize._vector_run(quantize.QuantSpec(1, 64, 14, 14, depth=16)) == 2
    assert quantize._vector_run(quantize.QuantSpec(1, 160, 7, 7, depth=16)) == 7
    func = quantize.compute(quantize.QuantSpec(1, 16, 8, 8, (1, 1, 1, 1)))
    lib = tvm.compile(standalone(func), target=get_profile("neoverse-n1").tvm_target())
    assert "st4\t" in lib.mod.inspect_source("s")  # 4 channels interleaved by the store


@pytest.mark.parametrize("target,has_sdot", [("neoverse-n1", True), ("cortex-a55", True),
                                         ("cortex-a72", False)])
def test_int8_kernel_builds_for_aarch64(target, has_sdot):
    knobs = load_knobs(target)["q8_conv2d"]
    func = sdot.schedule(sdot.compute(CASES[0][0]), knobs)
    lib = tvm.compile(standalone(func), target=get_profile(target).tvm_target())
    asm = lib.mod.inspect_source("s")
    assert ("sdot\t" in asm) == has_sdot


@pytest.mark.parametrize("qs", [quantize.QuantSpec(1, 64, 16, 16, (1, 1, 1, 1)),
                                quantize.QuantSpec(1, 3, 15, 15, (2, 1, 2, 0)),
                                quantize.QuantSpec(1, 3, 12, 12, (3, 3, 2, 2), phases=2),
                                quantize.QuantSpec(1, 8, 6, 6, (1, 1, 1, 1), phases=3,
                                                   offset=128),
                                quantize.QuantSpec(2, 6, 7, 7),
                                quantize.QuantSpec(1, 8, 7, 7, (1, 1, 1, 1), extra=1),
                                quantize.QuantSpec(1, 8, 9, 9, (1, 1, 1, 1), extra=6, phases=2),
                                quantize.QuantSpec(1, 24, 8, 8, (1, 1, 1, 1), depth=16),
                                quantize.QuantSpec(1, 32, 7, 7, depth=16),
                                quantize.QuantSpec(1, 16, 5, 5, (1, 1, 1, 1), depth=16),
                                # rows of one channel + 128: the x86 int8 depthwise conv's
                                quantize.QuantSpec(1, 5, 7, 7, offset=128, depth=1),
                                quantize.QuantSpec(2, 3, 4, 20, offset=128, depth=1)],
                         ids=str)
@pytest.mark.parametrize("vector", [True, False], ids=["vector", "blocks"])
def test_quantize_kernel_layout_and_values(qs, vector, rng):
    """Xq: quantized, in 4-channel groups (channels padded to 4; or 16, ``depth``), columns
    deinterleaved by the conv's stride, zero border and extra columns; s_x exact. Both
    forms: the one written already scheduled (where the width splits into runs) and the
    scheduled blocks."""
    func = quantize.compute(qs, vector=vector)
    assert (quantize.PRESCHEDULED_ATTR in func.attrs) == (
        vector and quantize._vector_run(qs) > 0)
    lib = tvm.compile(standalone(quantize.schedule(func, {})),
                      target=get_profile("x86").tvm_target())
    x = rng.normal(size=(qs.batch, qs.channels, qs.height, qs.width)).astype(np.float32)
    xq = tvm.runtime.tensor(np.zeros(qs.out_shape, qs.dtype))
    sx = tvm.runtime.tensor(np.zeros(1, np.float32))
    lib["main"](tvm.runtime.tensor(x), xq, sx)
    want_q, want_sx = quantize.quantize_input(x)
    pt, pl, _, _ = qs.padding
    ph, wq = qs.phases, qs.out_shape[4]
    nhwc = np.full((qs.batch, qs.out_shape[1], ph * wq, qs.c4), qs.offset, np.int16)
    nhwc[:, pt:pt + qs.height, pl:pl + qs.width, :qs.channels] = \
        want_q.transpose(0, 2, 3, 1).astype(np.int16) + qs.offset  # uint8 (x86 VNNI): + 128
    nhwc = nhwc.astype(qs.dtype)
    # [N, Hp, Wq * ph, C4] -> [N, Hp, C4/d, ph, Wq, d] (column w = j * ph + phase)
    d = qs.depth
    want = nhwc.reshape(qs.batch, -1, wq, ph, qs.c4 // d, d).transpose(0, 1, 4, 3, 2, 5)
    np.testing.assert_array_equal(xq.numpy(), want)
    assert sx.numpy()[0] == want_sx


#: Grouped convs: ResNeXt's groups of 4 input / 4 output channels, a RegNet-like group width
#: of 8 with stride 2 and odd sizes, a grouped 1x1 of 16 inputs and 8 outputs a group.
GROUPED = [
    (S(1, 32, 9, 9, 32, (3, 3), padding=(1, 1, 1, 1), groups=8), "32 groups of 4 (ResNeXt)"),
    (S(1, 48, 11, 9, 48, (3, 3), (2, 2), (1, 1, 1, 1), groups=6), "group width 8, stride 2"),
    (S(2, 64, 6, 6, 32, (1, 1), groups=4), "1x1, 16 in and 8 out a group, batch 2"),
]


@pytest.mark.parametrize("spec,why", GROUPED, ids=[c[1] for c in GROUPED])
@pytest.mark.parametrize("bits", [2, 4])
def test_grouped_int8_conv_matches_its_oracle(spec, why, bits, rng):
    """Each output block of 4 reads its own group's input channel blocks; the sdot form
    builds for a dotprod core."""
    spec = dataclasses.replace(spec, bits=bits, scaled=bits == 4)
    cw, q, d = _weights(spec, rng)
    x = rng.normal(size=(spec.batch, spec.in_channels, spec.height, spec.width))
    x = x.astype(np.float32)
    want = sdot.reference(spec, x, cw.indices(), q, d)
    for knobs in (None, load_knobs("x86")["q8_conv2d"]):
        assert rel_err(run_int8(spec, x, cw, q, d, knobs), want) < 1e-6, spec.name
    assert rel_err(want, conv2d.reference(spec, x, cw.dense())) < 0.03
    func = sdot.schedule(sdot.compute(spec), load_knobs("neoverse-n1")["q8_conv2d"])
    lib = tvm.compile(standalone(func), target=get_profile("neoverse-n1").tvm_target())
    assert "sdot\t" in lib.mod.inspect_source("s")


def test_grouped_convs_the_int8_conv_does_not_take():
    assert "4-channel blocks" in sdot.supports(S(1, 12, 8, 8, 12, (3, 3), groups=4))  # 3 in
    assert "4-channel blocks" in sdot.supports(S(1, 16, 8, 8, 8, (3, 3), groups=4))  # 2 out
    assert "depthwise" in sdot.supports(S(1, 16, 8, 8, 16, (3, 3), groups=16))
    assert not sdot.supports(S(1, 16, 8, 8, 16, (3, 3), groups=4))
