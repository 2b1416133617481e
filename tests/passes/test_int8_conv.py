"""The int8 piece of the lowering (``passes/int8_conv.py``): which convs take the int8
kernels on which core, what the rest say, and the numbers against the exact build."""

import json

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from dgms_tvm import compiler, frontend, strategies
from dgms_tvm.detect import find_codebook
from dgms_tvm.errors import UserError
from dgms_tvm.kernels import KERNEL_ATTR, SPEC_ATTR
from dgms_tvm.kernels.conv import Conv2dSpec
from dgms_tvm.kernels.int8 import sdot as ksdot
from dgms_tvm.kernels.int8.operands import decode as kdecode
from dgms_tvm.kernels.int8.operands import quantize as kquant
from dgms_tvm.kernels.int8.operands import weights as kweights
from dgms_tvm.passes import LoweringPolicy, lower_codebook_layers
from dgms_tvm.quant import hard_quantize
from dgms_tvm.targets import get_profile
from tests.helpers import random_codebook_weight, rel_err
from tests.passes.graphs import Block, main_calls, main_consts, quantized_net, relax_main


def test_int8_strategy_lowers_the_layers_it_can_and_says_why_not_the_rest():
    net, _ = quantized_net()
    x = torch.randn(1, 3, 12, 12)
    imported = frontend.from_torch(net, (x,))
    exact = compiler.lower(imported, 4)
    lowered = compiler.lower(imported, 4, strategy="int8")
    by_name = {r.name: r for r in lowered.records}
    assert by_name["conv.weight"].strategy == "int8"
    assert by_name["conv.weight"].kernel.startswith("q8_conv2d_")
    assert by_name["dw.weight"].strategy == "exact"
    assert "depthwise" in by_name["dw.weight"].reason
    # 4 groups of 8 channels: the int8 conv's grouped form
    assert by_name["grouped.weight"].kernel.startswith("q8_conv2d_")
    assert by_name["fc.weight"].strategy == "exact"
    # Not a codebook: its FP32 weight quantized per channel, through the same int8 kernel (it
    # stays FP32 in the exact build and in the FP32 baseline).
    stem = by_name["stem.weight"]
    assert not stem.lowered and stem.strategy == "int8"
    assert stem.fp32_kernel.startswith("q8_conv2d_") and "_w8_pre" in stem.fp32_kernel
    assert {r.name: r for r in exact.records}["stem.weight"].strategy is None
    fp32 = compiler.lower(imported, 4, codebooks=False, strategy="int8")
    assert all(r.strategy is None for r in fp32.records)
    families = [str(f.attrs[KERNEL_ATTR]) for op, f in main_calls(lowered.mod) if op == "call_tir"]
    assert families[:5] == ["q8_quant", "q8_conv2d", "q8_quant", "q8_decode", "q8_conv2d"]
    target = get_profile("x86")
    got = compiler.run_local(compiler.build(lowered, target), [x.numpy()])[0]
    want = compiler.run_local(compiler.build(exact, target), [x.numpy()])[0]
    assert 0 < rel_err(got, want) < 0.05  # int8 rounding: close, not equal
    # For this host as target: on x86 with VNNI the input is stored + 128 (uint8) and the
    # sums corrected per channel; the batch-1 classifier is an int8 GEMV (VNNI, or its AVX2
    # form).
    from dgms_tvm.targets import host_has

    host = get_profile("x86")
    for_host = compiler.lower(imported, 4, strategy="int8", profile=host)
    unsigned = ksdot.unsigned_input(host)
    recs = {r.name: r for r in for_host.records}
    assert ("_u8" in recs["conv.weight"].kernel) == unsigned
    # x86 VNNI keeps the int8 weights decoded at compile time: no decode kernel per call
    called = [str(f.attrs[KERNEL_ATTR]) for op, f in main_calls(for_host.mod)
              if op == "call_tir"]
    assert ("q8_decode" in called) != strategies.for_core(strategies.KEEP_INT8_WEIGHTS, host)
    assert "_pre" in recs["conv.weight"].kernel
    assert (recs["fc.weight"].strategy == "int8") == (unsigned or host_has("avx2"))
    got_host = compiler.run_local(compiler.build(for_host, target), [x.numpy()])[0]
    assert 0 < rel_err(got_host, want) < 0.05

def test_strategy_choice():
    n1, a72 = get_profile("neoverse-n1"), get_profile("cortex-a72")
    assert strategies.resolve("auto", n1) == "int8"  # sdot
    assert strategies.resolve("auto", a72) == "int8"  # the widening kernel
    assert strategies.resolve("exact", a72) == "exact"
    host = get_profile("x86")  # VNNI where this host has it
    assert (strategies.resolve("auto", host) == "int8") == \
        ksdot.unsigned_input(host)
    assert strategies.resolve("lut", n1) == "lut"  # asked for: never chosen by auto
    with pytest.raises(UserError, match=r"'fast'.*auto, exact, int8, int8-full, lut"):
        strategies.resolve("fast", n1)

def test_int8_on_a_core_without_sdot_takes_the_widening_kernel():
    """For cortex-a72 (no dotprod) the int8 convs are the widening kernel (16 input channels
    at a time) behind a depth-16 quantize and decode; layers with too few input channels for
    it stay exact (the generic int8 kernel is slower than FP32 there) and say so. Built for
    this host, the same module runs the kernels' plain vector form."""
    torch.manual_seed(0)
    net = Block().eval()
    hard_quantize(net, 4)
    x = torch.randn(1, 8, 12, 12)
    imported = frontend.from_torch(net, (x,))
    a72 = get_profile("cortex-a72")
    lowered = compiler.lower(imported, 4, strategy="int8", profile=a72)
    recs = {r.name: r for r in lowered.records}
    # 8 input channels: the codebook layer stays exact, the float32 first conv FP32
    assert recs["ds.weight"].strategy == "exact" and "16 at a time" in recs["ds.weight"].reason
    assert recs["c1.weight"].strategy is None
    assert recs["c1.weight"].fp32_kernel.startswith("fp32_conv2d_")
    for name in ("c2.weight", "c3.weight", "c4.weight"):
        assert recs[name].strategy == "int8" and recs[name].kernel.startswith("q8l_conv2d_")
    assert recs["c2.weight"].epilogue == "batch_norm+add+relu"
    called = [f for op, f in main_calls(lowered.mod) if op == "call_tir"]
    quants = [json.loads(str(f.attrs[SPEC_ATTR])) for f in called
              if str(f.attrs[KERNEL_ATTR]) == "q8_quant"]
    assert len(quants) == 3 and all(q["depth"] == 16 for q in quants)
    host = get_profile("x86")
    got = compiler.run_local(compiler.build(lowered, host), [x.numpy()])[0]
    exact = compiler.run_local(compiler.build(compiler.lower(imported, 4), host),
                               [x.numpy()])[0]
    assert 0 < rel_err(got, exact) < 0.05

def test_int8_full_keeps_8_bit_weights_on_a_core_without_sdot():
    """``int8-full`` on cortex-a72: the widening kernel with 8-bit weights (``_w127``, its
    codebook to +-127), closer to exact than ``int8``'s 7-bit weights; on neoverse-n1 it is
    ``int8`` (sdot keeps 8 bits anyway)."""
    torch.manual_seed(0)
    net = Block().eval()
    hard_quantize(net, 4)
    x = torch.randn(1, 8, 12, 12)
    imported = frontend.from_torch(net, (x,))
    a72, n1, host = (get_profile(t) for t in ("cortex-a72", "neoverse-n1", "x86"))
    assert strategies.resolve("int8-full", a72) == "int8-full"
    outs = {}
    for strategy in ("exact", "int8", "int8-full"):
        lowered = compiler.lower(imported, 4, strategy=strategy, profile=a72)
        c3 = next(r for r in lowered.records if r.name == "c3.weight")
        if strategy != "exact":
            assert c3.strategy == "int8"
            assert c3.kernel.endswith("_w127") == (strategy == "int8-full")
            codebooks = [v for v in (c.value.numpy() for c in main_consts(lowered.mod))
                         if v.dtype == np.int8 and v.size == 16]
            top = max(int(np.abs(q).max()) for q in codebooks)  # 8-bit entries, or 7
            assert top > 63 if strategy == "int8-full" else top <= 63
        outs[strategy] = compiler.run_local(compiler.build(lowered, host), [x.numpy()])[0]
    assert 0 < rel_err(outs["int8-full"], outs["exact"]) < rel_err(outs["int8"], outs["exact"])
    full_n1 = compiler.lower(imported, 4, strategy="int8-full", profile=n1)
    int8_n1 = compiler.lower(imported, 4, strategy="int8", profile=n1)
    assert [r.kernel for r in full_n1.records] == [r.kernel for r in int8_n1.records]


def test_before_and_expected():
    """Under int8 (no target: the sdot-form kernel, signed input) a 4-bit codebook conv
    becomes three calls: the input's quantize (int8 and its scale), the weight's decode
    from packed indices and the int8 codebook, the int8 conv with the per-channel factor;
    numbers close to the conv's."""
    rng = np.random.default_rng(2)
    w = random_codebook_weight(rng, (16, 8, 3, 3), 4).dense()
    shapes = {"x": (1, 8, 6, 6), "w": w.shape}
    before = relax_main(shapes, lambda bb, x, wv: bb.emit(
        relax.op.nn.conv2d(x, wv, padding=1)))
    records = []
    after = lower_codebook_layers(LoweringPolicy({"w": w}, 4, strategy="int8",
                                                 zero_skip=False), records)(before)
    cw = find_codebook(w, 4)
    spec = Conv2dSpec(1, 8, 6, 6, 16, (3, 3), padding=(1, 1, 1, 1), bits=cw.bits)
    qs, ds = kquant.QuantSpec.of(spec), kdecode.DecodeSpec.of(spec)
    qcb, d = kweights.quantize_codebook(cw.codebook, cw.scale, 16, 127, indices=cw.indices())
    name = ksdot.name(spec, predecoded=True)

    def expected(bb, x, _w):
        q = bb.emit(relax.call_tir(bb.add_func(kquant.compute(qs), qs.name), [x], out_ty=[
            relax.TensorType(qs.out_shape, qs.dtype), relax.TensorType((1,), "float32")]))
        xq, sx = relax.TupleGetItem(q, 0), relax.TupleGetItem(q, 1)
        wq = bb.emit(relax.call_tir(bb.add_func(kdecode.compute(ds), ds.name), [
            relax.const(kdecode.pack_for_decode(ds, cw.indices()), "uint8"),
            relax.const(kweights.q16(qcb), "int8"), sx],
            out_ty=relax.TensorType(ds.shape, "int8")))
        conv = bb.add_func(ksdot.compute(spec, predecoded=True), name)
        return bb.emit(relax.call_tir(conv, [xq, sx, wq, relax.const(d, "float32")],
                                      out_ty=relax.TensorType(spec.out_shape, "float32")))

    tvm.ir.assert_structural_equal(after, relax_main(shapes, expected))
    assert records[0].kernel == name and records[0].strategy == "int8"
    xs = rng.standard_normal((1, 8, 6, 6)).astype(np.float32)
    mod = relax.transform.BindParams("main", {"w": tvm.runtime.tensor(w)})(after)
    got = compiler.run_local(compiler.build(compiler.Lowered(mod, records),
                                            get_profile("x86")), [xs])[0]
    want = torch.nn.functional.conv2d(torch.from_numpy(xs), torch.from_numpy(w),
                                      padding=1).numpy()
    assert 0 < rel_err(got, want) < 0.03

@pytest.mark.parametrize("codebook_stem", [False, True])
def test_a_stem_of_3_channels_takes_the_gathered_int8_conv_without_sdot(codebook_stem):
    """For cortex-a72 the 3-channel stem (float32, quantized per channel; or a 2-bit codebook
    that the user quantized too) runs the widening kernel's 1x1 conv over its gathered taps
    (kernels.int8.gathered: 27 values in 2 groups of 16), its BatchNorm + relu fused after it;
    for neoverse-n1 the sdot conv takes it as it is. Built for this host, close to the exact
    build."""
    net, _ = quantized_net()
    if codebook_stem:
        hard_quantize(net.stem, 2, skip=())
    x = torch.randn(1, 3, 12, 12)
    imported = frontend.from_torch(net, (x,))
    lowered = compiler.lower(imported, 4, strategy="int8", profile=get_profile("cortex-a72"))
    stem = {r.name: r for r in lowered.records}["stem.weight"]
    assert stem.strategy == "int8" and stem.lowered == codebook_stem and not stem.reason
    kernel = stem.kernel if codebook_stem else stem.fp32_kernel
    assert kernel.startswith("q8l_conv2d_n1_c32_h12_w12_o16_k1x1_") and "relu" in kernel
    assert stem.epilogue == "bias+batch_norm+relu"  # (the stem has a bias)
    called = [str(f.attrs[KERNEL_ATTR]) for op, f in main_calls(lowered.mod) if op == "call_tir"]
    assert called[:3] == ["q8_quant", "q8_im2col", "q8l_conv2d"]
    n1 = compiler.lower(imported, 4, strategy="int8", profile=get_profile("neoverse-n1"))
    n1_stem = {r.name: r for r in n1.records}["stem.weight"]
    assert (n1_stem.kernel or n1_stem.fp32_kernel).startswith("q8_conv2d_n1_c3_")
    host = get_profile("x86")
    got = compiler.run_local(compiler.build(lowered, host), [x.numpy()])[0]
    exact = compiler.run_local(compiler.build(compiler.lower(imported, 4), host), [x.numpy()])[0]
    assert 0 < rel_err(got, exact) < 0.05


@pytest.mark.parametrize("bits", [1, 2])
def test_low_bit_layers_take_the_lookup_table_conv_without_sdot(bits):
    """For cortex-a72 a 1- or 2-bit codebook conv whose tables are read often enough is the
    lookup-table conv (its epilogue fused as the widening conv's); the 1x1 convs of 16 and 8
    outputs (2 and 1 reads a table) take the widening conv and say why; a layer neither
    takes keeps the widening conv's reason (8 input channels); ``int8-full`` keeps the
    widening conv, neoverse-n1 the sdot conv. Built for this host (the kernel's plain
    form), within the tables' error of exact."""
    torch.manual_seed(0)
    net = Block().eval()
    hard_quantize(net, bits)
    x = torch.randn(1, 8, 12, 12)
    imported = frontend.from_torch(net, (x,))
    a72, n1, host = (get_profile(t) for t in ("cortex-a72", "neoverse-n1", "x86"))
    lowered = compiler.lower(imported, bits, strategy="int8", profile=a72)
    recs = {r.name: r for r in lowered.records}
    c2 = recs["c2.weight"]
    assert c2.strategy == "int8" and not c2.reason and c2.kernel.startswith("q8t_conv2d_")
    assert c2.epilogue == "batch_norm+add+relu"
    for name, reads in (("c3.weight", 2), ("c4.weight", 1)):
        assert recs[name].strategy == "int8" and recs[name].kernel.startswith("q8l_conv2d_")
        assert recs[name].reason == (f"widening int8 conv: each table would be read {reads} "
                                     "times (the lookup-table conv pays from 16)")
    assert recs["ds.weight"].strategy == "exact" and "16 at a time" in recs["ds.weight"].reason
    full = {r.name: r for r in compiler.lower(imported, bits, strategy="int8-full",
                                              profile=a72).records}
    assert full["c2.weight"].kernel.startswith("q8l_conv2d_") and not full["c3.weight"].reason
    sdot = {r.name: r for r in compiler.lower(imported, bits, strategy="int8",
                                              profile=n1).records}
    assert sdot["c2.weight"].kernel.startswith("q8_conv2d_")
    got = compiler.run_local(compiler.build(lowered, host), [x.numpy()])[0]
    exact = compiler.run_local(compiler.build(compiler.lower(imported, bits), host),
                               [x.numpy()])[0]
    assert 0 < rel_err(got, exact) < 0.1


class _MiniMobile(torch.nn.Module):
    """A MobileNet stem (3 channels), a depthwise conv and a pointwise conv."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False),
                                nn.BatchNorm2d(16), nn.ReLU6())
        self.pw = nn.Conv2d(16, 24, 1)

    def forward(self, x):
        return self.pw(self.dw(self.stem(x))).mean((2, 3))


def test_int8_on_an_i8mm_core_takes_the_smmla_conv():
    """For neoverse-n2 (i8mm): the convs are the smmla conv behind quantize / decode kernels
    in 8-channel groups; the 3-channel stem's taps gathered into a 1x1 smmla conv (9 taps,
    2 a group of 8: 40 channels); the depthwise conv reads and writes 8-channel groups.
    Built for this host, the same module runs the plain code close to exact."""
    torch.manual_seed(0)
    net = _MiniMobile().eval()
    hard_quantize(net, 4)
    x = torch.randn(1, 3, 16, 16)
    imported = frontend.from_torch(net, (x,))
    n2 = get_profile("neoverse-n2")
    lowered = compiler.lower(imported, 4, strategy="int8", profile=n2)
    recs = {r.name: r for r in lowered.records}
    stem = recs["stem.0.weight"]
    assert "_c40_" in (stem.kernel or stem.fp32_kernel) and "_k1x1_" in (
        stem.kernel or stem.fp32_kernel)
    assert recs["pw.weight"].kernel.startswith("q8m_conv2d_")
    assert recs["dw.0.weight"].kernel.startswith("q8_dw_conv2d_") and \
        recs["dw.0.weight"].kernel.endswith("_d8")
    called = [f for op, f in main_calls(lowered.mod) if op == "call_tir"]
    fams = [str(f.attrs[KERNEL_ATTR]) for f in called]
    assert "q8_im2col" in fams and fams.count("q8m_conv2d") == 2
    quants = [json.loads(str(f.attrs[SPEC_ATTR])) for f in called
              if str(f.attrs[KERNEL_ATTR]) == "q8_quant"]
    assert sorted(q["depth"] for q in quants) == [4, 8, 8]  # the gather reads words of 4
    host = get_profile("x86")
    got = compiler.run_local(compiler.build(lowered, host), [x.numpy()])[0]
    exact = compiler.run_local(compiler.build(compiler.lower(imported, 4), host),
                               [x.numpy()])[0]
    assert 0 < rel_err(got, exact) < 0.05


@pytest.mark.parametrize("target,family", [("neoverse-n1", "q8_conv2d_"),
                                           ("neoverse-n2", "q8m_conv2d_"),
                                           ("x86", "q8_conv2d_")])
def test_output_channels_not_in_whole_blocks_are_padded_with_zero_weights(target, family):
    """ShuffleNetV2's 58-channel convs (the int8 convs write whole blocks of 4 or 8): 6 and
    10 output channels computed as 8 and 12 (index 0 is exactly zero), the extra channels
    sliced off; the bias and relu after it still apply; the numbers stay near exact."""
    net = torch.nn.Sequential(torch.nn.Conv2d(16, 6, 3, 2, 1), torch.nn.ReLU(),
                              torch.nn.Conv2d(6, 10, 1), torch.nn.ReLU())
    hard_quantize(net, 3, skip=())
    x = torch.randn(1, 16, 11, 11)
    imported = frontend.from_torch(net, (x,))
    profile = get_profile(target)
    lowered = compiler.lower(imported, 3, strategy="int8", profile=profile)
    recs = [r for r in lowered.records if r.lowered]
    assert [r.strategy for r in recs] == ["int8", "int8"]
    assert [r.reason for r in recs] == ["6 output channels computed as 8 (zero weights)",
                                        "10 output channels computed as 12 (zero weights)"]
    assert all(r.kernel.startswith(family) for r in recs), recs
    if target != "x86":
        compiler.prepare(lowered, profile)
    host = get_profile("x86")
    got = compiler.run_local(compiler.build(lowered, host), [x.numpy()])[0]
    exact = compiler.lower(imported, 3, strategy="exact", profile=host)
    want = compiler.run_local(compiler.build(exact, host), [x.numpy()])[0]
    assert got.shape == want.shape == (1, 10, 6, 6)
    assert (got >= 0).all() and 0 < rel_err(got, want) < 0.05
