"""GEMV kernels (x86: exact vpermps, int8 vpshufb + VNNI, lut AVX2 permutes; any target:
fp32 and the lut kernel's one-load-per-lookup form) against their NumPy oracles."""

import numpy as np
import pytest

from dgms_tvm import compiler
from dgms_tvm.kernels import gemv
from dgms_tvm.targets import get_profile
from tests.helpers import NEEDS_VNNI, random_codebook_weight, rel_err, run_kernel

G = gemv.GemvSpec
HOST = get_profile("x86")
#: The kernels run where the host has their instructions; elsewhere the pass never picks them.
NEEDS_AVX512 = pytest.mark.skipif(
    bool(gemv.supports(G(1, 4, 32, 4, arith="exact", rows=4), HOST)),
    reason="this host lacks AVX-512F (the exact GEMV kernel's instructions)")


def _spec(m, n, k, bits, arith):
    return G(m, n, k, bits, arith=arith, rows=gemv.rows_for(n, arith))


def _run(spec, x, cw):
    args = [x, *gemv.operands(spec, cw.indices(), cw.codebook, cw.scale)]
    return run_kernel(gemv.compute(spec), [*args, np.zeros((spec.m, spec.n), np.float32)])


@NEEDS_AVX512
@pytest.mark.parametrize("m,n,k", [(1, 64, 96), (1, 6, 32), (2, 5, 64), (1, 1000, 512)])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_exact_matches_oracle(m, n, k, bits, rng):
    spec = _spec(m, n, k, bits, "exact")
    assert not gemv.supports(spec, HOST)
    cw = random_codebook_weight(rng, (n, k), bits, scaled=bits in (2, 4))
    x = rng.normal(size=(m, k)).astype(np.float32)
    want = gemv.reference(spec, x, cw.indices(), cw.codebook, cw.scale)
    assert rel_err(want, x @ cw.dense().T) < 1e-5  # the oracle is the layer's product
    assert rel_err(_run(spec, x, cw), want) < 1e-5


@NEEDS_VNNI
@pytest.mark.parametrize("m,n,k", [(1, 64, 96), (1, 24, 200), (2, 5, 128), (1, 16, 300)])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_int8_matches_oracle(m, n, k, bits, rng):
    spec = _spec(m, n, k, bits, "int8")
    cw = random_codebook_weight(rng, (n, k), bits, scaled=bits == 3)
    x = rng.normal(size=(m, k)).astype(np.float32)
    x[0, :3] = [4.0, -4.0, 0.5 / 127 * 4.0]  # max|x| = 4 and a value on a rounding tie
    got = _run(spec, x, cw)
    want = gemv.reference(spec, x, cw.indices(), cw.codebook, cw.scale)
    assert rel_err(got, want) < 1e-6  # the same integers, one float rounding apart
    # and int8 is an approximation of the exact product, not something else
    assert rel_err(got, x @ cw.dense().T) < 0.05


@NEEDS_VNNI
def test_int8_all_zero_input_gives_zero(rng):
    spec = _spec(1, 8, 128, 4, "int8")
    cw = random_codebook_weight(rng, (8, 128), 4)
    got = _run(spec, np.zeros((1, 128), np.float32), cw)
    assert np.array_equal(got, np.zeros_like(got))


def test_fp32_matches_oracle(rng):
    """Generic vector code: on every host (and aarch64, see tests/device)."""
    spec = _spec(1, 36, 64, 32, "fp32")
    assert not gemv.supports(spec, HOST)
    assert not gemv.supports(spec, get_profile("cortex-a72"))
    w = rng.normal(size=(36, 64)).astype(np.float32)
    x = rng.normal(size=(1, 64)).astype(np.float32)
    got = run_kernel(gemv.compute(spec), [x, w, np.zeros((1, 36), np.float32)])
    assert rel_err(got, gemv.reference(spec, x, w, None)) < 1e-5


NEEDS_AVX2 = pytest.mark.skipif(
    bool(gemv.supports(G(1, 16, 32, 4, arith="lut", rows=16), HOST)),
    reason="this host lacks AVX2 (the lut GEMV's permutes)")


def _lut_operands(spec, cw):
    return [gemv.lut_pack(spec, cw.indices()), gemv.lut_codebooks(spec, cw.codebook),
            gemv.lut_scale(spec, cw.scale)]


@pytest.mark.parametrize("form", [pytest.param("", marks=NEEDS_AVX2), "gather"])
@pytest.mark.parametrize("m,n,k", [(1, 64, 96), (1, 40, 30), (2, 1000, 512), (1, 16, 7)])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_lut_matches_oracle(m, n, k, bits, form, rng):
    """Tables of 16 (1, 2, 4 bits: groups of 4, 2, 1 weights) and of 8 entries (3 bits); a
    partial last tile (40, 1000 rows); K not a whole number of groups (30, 7)."""
    spec = G(m, n, k, bits, arith="lut", rows=gemv.rows_for(n, "lut"), form=form)
    assert not gemv.supports(spec, HOST)
    cw = random_codebook_weight(rng, (n, k), bits, scaled=bits in (2, 4))
    x = rng.normal(size=(m, k)).astype(np.float32)
    got = run_kernel(gemv.compute(spec), [x, *_lut_operands(spec, cw),
                                          np.zeros((m, n), np.float32)])
    assert rel_err(got, gemv.reference(spec, x, cw.indices(), cw.codebook, cw.scale)) < 1e-5


@NEEDS_AVX2
@pytest.mark.parametrize("m,n,k", [(1, 64, 96), (1, 24, 200), (2, 5, 128), (1, 1000, 512)])
@pytest.mark.parametrize("bits", [1, 2, 4])
def test_int8_avx2_matches_oracle(m, n, k, bits, rng):
    """The int8 arithmetic without VNNI: the same integers as the oracle (no int16
    saturation: max|x| and a +-127 codebook entry make the largest pair, 2 * 127 * 127)."""
    spec = G(m, n, k, bits, arith="int8", rows=gemv.rows_for(n, "int8"), form="avx2")
    assert not gemv.supports(spec, HOST)
    cw = random_codebook_weight(rng, (n, k), bits, scaled=bits == 2)
    x = rng.normal(size=(m, k)).astype(np.float32)
    x[0, :4] = [4.0, -4.0, 4.0, 0.5 / 127 * 4.0]  # max|x| = 4 (to +-127) and a rounding tie
    got = _run(spec, x, cw)
    want = gemv.reference(spec, x, cw.indices(), cw.codebook, cw.scale)
    assert rel_err(got, want) < 1e-6
    assert rel_err(got, x @ cw.dense().T) < 0.05
    assert np.array_equal(_run(spec, np.zeros_like(x), cw), np.zeros((m, n), np.float32))


@NEEDS_AVX2
def test_int8_avx2_extremes_do_not_saturate():
    """Every pair of products at -127 * 127 (int16 holds 32767: 2 * 16129 = 32258)."""
    spec = G(1, 16, 256, 1, arith="int8", rows=8, form="avx2")
    idx = np.ones((16, 256), np.uint8)
    idx[8:] = 0  # the zero entry
    cb = np.array([0.0, -0.5], np.float32)  # int8 entries 0 and -127
    x = np.full((1, 256), 3.0, np.float32)  # every input 127
    got = run_kernel(gemv.compute(spec), [x, *gemv.operands(spec, idx, cb),
                                          np.zeros((1, 16), np.float32)])
    assert np.array_equal(got[0], np.r_[np.full(8, -0.5 * 3.0 * 256, np.float32), np.zeros(8)])


def test_lut_layout():
    """A 2-bit group of 2 weights is one 4-bit index (the first weight's index in the low
    bits); row j and row rows/2 + j share a byte; padding rows and weights have index 0."""
    spec = G(1, 20, 5, 2, arith="lut", rows=16)
    assert (spec.group, spec.entries, spec.packed_shape) == (2, 16, (2, 3, 8))
    idx = np.arange(20 * 5).reshape(20, 5) % 4
    p = gemv.lut_pack(spec, idx)
    assert p[0, 1, 3] == (idx[3, 2] | idx[3, 3] << 2) | (idx[11, 2] | idx[11, 3] << 2) << 4
    assert p[1, 2, 3] == idx[19, 4]  # weight 5 padded; rows 20.. padded (high nibble 0)
    ex = gemv.lut_codebooks(spec, np.array([0, 1, 2, 3], np.float32))
    # table entry e = e0 + 4 * e1 is X[2q] * cb[e0] + X[2q + 1] * cb[e1]
    assert ex.shape == (2, 16) and ex[0, 7] == 3 and ex[1, 7] == 1
    assert G(1, 16, 8, 3, arith="lut", rows=16).entries == 8


def test_pack_layout():
    spec = G(1, 4, 40, 4, arith="exact", rows=2)  # K padded to 64: two chunks of 32
    idx = np.arange(4 * 40).reshape(4, 40) % 16
    p = gemv.pack(spec, idx)
    assert p.shape == spec.packed_shape == (2, 2, 32)
    # tile 1 (rows 2, 3), chunk 0, row 3 (second in the tile), byte 5: weights 5 and 21
    assert p[1, 0, 16 + 5] == idx[3, 5] | (idx[3, 21] << 4)
    # chunk 1 holds weights 32..39 and zero padding (index 0)
    assert p[0, 1, 7] == idx[0, 39] and p[0, 1, 8] == 0


def test_supports_says_why_not():
    arm = get_profile("cortex-a72")
    assert "x86" in gemv.supports(G(1, 4, 32, 4, arith="exact", rows=4), arm)
    assert gemv.supports(G(1, 4, 32, 8, arith="exact", rows=4), HOST)
    assert gemv.supports(G(1, 6, 64, 4, arith="exact", rows=4), HOST)  # 6 rows in tiles of 4
    if not gemv.supports(G(1, 4, 32, 4, arith="exact", rows=4), HOST):
        assert "multiple of 32" in gemv.supports(G(1, 4, 40, 4, arith="exact", rows=4), HOST)


@NEEDS_VNNI
@pytest.mark.parametrize("strategy", ["exact", "int8"])
def test_pass_lowers_batch1_dense_to_gemv(strategy, rng):
    """A Linear layer at batch 1 on this host becomes a GEMV kernel of the strategy, and the
    model's output matches the model without the GEMV kernel (the generic dense)."""
    import torch

    from dgms_tvm.frontend import from_torch

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 24, bias=True)
    cw = random_codebook_weight(rng, (24, 64), 4, scaled=True)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(cw.dense()))
    x = rng.normal(size=(1, 64)).astype(np.float32)
    imported = from_torch(lin.eval(), (torch.from_numpy(x),))
    host = get_profile("x86")
    lowered = compiler.lower(imported, 4, strategy=strategy, profile=HOST)
    (rec,) = lowered.records
    assert rec.kernel.startswith(f"cb_gemv_{strategy}_m1_n24_k64_b4") and rec.strategy == strategy
    generic = compiler.lower(imported, 4)
    assert generic.records[0].kernel.startswith("cb_dense")
    got = compiler.run_local(compiler.build(lowered, host), [x])[0]
    want = compiler.run_local(compiler.build(generic, host), [x])[0]
    assert rel_err(got, want) < (1e-5 if strategy == "exact" else 0.05)
    fp32 = compiler.lower(imported, 4, codebooks=False, profile=HOST)
    assert fp32.records[0].fp32_kernel == "fp32_gemv_m1_n24_k64"


#: exact / int8 take the lut and AVX2 int8 GEMVs only on x86 hosts with AVX2 and without the
#: AVX-512 GEMV kernels (which they take instead: tested above)
AVX2_ONLY = pytest.mark.skipif(
    not gemv.supports(G(1, 24, 128, 2, arith="exact", rows=4), HOST)
    or bool(gemv.supports(G(1, 24, 128, 2, arith="lut", rows=16), HOST)),
    reason="this host runs the AVX-512 GEMV kernels, or has no AVX2")


@pytest.mark.parametrize("strategy", ["lut", pytest.param("exact", marks=AVX2_ONLY),
                                      pytest.param("int8", marks=AVX2_ONLY)])
def test_pass_lowers_batch1_dense_to_lut(strategy, rng):
    """``--strategy lut``: a batch-1 codebook dense runs the lut GEMV (permutes where the host
    has AVX2, else one load per lookup) and matches the generic exact build; convs stay
    exact and say why. ``exact`` takes it too on hosts without the exact GEMV's AVX-512;
    ``int8`` there takes the AVX2 int8 GEMV."""
    import torch

    from dgms_tvm.frontend import from_torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 4 * 4, 24))
    cws = [random_codebook_weight(rng, (8, 4, 3, 3), 2),
           random_codebook_weight(rng, (24, 128), 2, scaled=True)]
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(cws[0].dense()))
        net[2].weight.copy_(torch.from_numpy(cws[1].dense()))
    x = rng.normal(size=(1, 4, 6, 6)).astype(np.float32)
    imported = from_torch(net.eval(), (torch.from_numpy(x),))
    lowered = compiler.lower(imported, 2, strategy=strategy, profile=HOST)
    conv, fc = lowered.records
    avx2 = not gemv.supports(G(1, 24, 128, 2, arith="lut", rows=16), HOST)
    host = get_profile("x86")
    generic = compiler.lower(imported, 2, strategy="exact")  # no target: the generic dense
    assert generic.records[1].kernel.startswith("cb_dense")
    want = compiler.run_local(compiler.build(generic, host), [x])[0]
    got = compiler.run_local(compiler.build(lowered, host), [x])[0]
    if strategy == "int8":
        assert fc.kernel.startswith("cb_gemv_int8_avx2_m1_n24_k128_b2")
        assert fc.strategy == "int8" and 0 < rel_err(got, want) < 0.05
        return
    assert fc.kernel.startswith("cb_gemv_lut" + ("" if avx2 else "_gather") + "_m1_n24_k128_b2")
    assert fc.strategy == "lut" and conv.strategy == "exact"
    if strategy == "lut":
        assert "no lut conv2d kernel" in conv.reason
    assert rel_err(got, want) < 1e-5


def test_aarch64_batch1_codebook_dense_takes_the_lut_tbl_gemv(rng):
    """On aarch64 (no exact GEMV there) a batch-1 codebook dense runs the lut GEMV's tbl form
    in every strategy (FP32 arithmetic; 6 to 21x fewer instructions than the generic dense
    kernel: see scripts/bench_gemv_arm.py); its numbers on the emulated cores: see
    tests/device."""
    import torch

    from dgms_tvm.frontend import from_torch

    lin = torch.nn.Linear(64, 40, bias=False)
    cw = random_codebook_weight(rng, (40, 64), 2)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(cw.dense()))
    x = torch.randn(1, 64)
    imported = from_torch(lin.eval(), (x,))
    for cpu in ("cortex-a72", "neoverse-n1"):
        for strategy in ("exact", "int8", "lut"):
            lowered = compiler.lower(imported, 2, strategy=strategy,
                                     profile=get_profile(cpu))
            (rec,) = lowered.records
            assert rec.kernel.startswith("cb_gemv_lut_tbl_m1_n40_k64_b2"), (cpu, strategy)
            assert rec.strategy == "lut"


@NEEDS_AVX2
def test_bench_gemv_small_shape():
    """The benchmark checks every row against its oracle before timing; at a small shape it
    runs in seconds and reports every row."""
    from dgms_tvm.bench import gemv_kernels

    res = gemv_kernels.run([(64, 128)], bits=4, rounds=1, trials=0, log=lambda m: None,
                           bandwidth_bytes=1 << 22)
    labels = [r["label"] for r in res["shapes"][0]["rows"]]
    dgms = [f"DGMS 4-bit {a}" + (f" ({f})" if f else "")
            for a, f in (("exact", ""), ("int8", ""), ("int8", "avx2"), ("lut", ""))
            if not gemv.supports(G(1, 64, 128, 4, arith=a, rows=gemv.rows_for(64, a), form=f),
                                 HOST)]
    assert labels == ["numpy FP32 (BLAS)", "TVM FP32 (hand GEMV)", *dgms]
    assert "DGMS 4-bit lut" in dgms
    assert res["read_gbps"] > 0
    assert "DGMS 4-bit lut" in gemv_kernels.format_report(res)


def test_tbl_form_rebuilds_for_targets_without_it(rng):
    """A module lowered for aarch64 (the tbl form) builds for this host: the schedule of a
    target without ``"lookup": "tbl"`` rebuilds it with one load per lookup, same numbers."""
    from dgms_tvm.kernels.common import SPEC_ATTR
    from dgms_tvm.schedules import load_knobs

    spec = G(1, 40, 96, 3, arith="lut", rows=32, form="tbl")  # 3 bits: tables of 8, in 16
    func = gemv.compute(spec)
    assert gemv.schedule(func, load_knobs("cortex-a72")["cb_gemv"]) is func
    host = gemv.schedule(func, load_knobs("x86")["cb_gemv"])
    assert '"form": "gather"' in str(host.attrs[SPEC_ATTR])
    cw = random_codebook_weight(rng, (40, 96), 3, scaled=True)
    x = rng.normal(size=(1, 96)).astype(np.float32)
    got = run_kernel(host, [x, *gemv.operands(spec, cw.indices(), cw.codebook, cw.scale),
                            np.zeros((1, 40), np.float32)])
    assert rel_err(got, gemv.reference(spec, x, cw.indices(), cw.codebook, cw.scale)) < 1e-5
