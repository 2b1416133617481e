"""The codebook lowering pass on small graphs: structure (which ops were replaced, by what)
and numbers (equal to the un-rewritten model)."""

import json

import numpy as np
import pytest
import torch
import tvm
import tvm_ffi
from torch import nn
from tvm import relax

from dgms_tvm import compiler, frontend, strategies
from dgms_tvm.errors import UserError
from dgms_tvm.kernels import KERNEL_ATTR, SPEC_ATTR
from dgms_tvm.kernels import int8 as kint8
from dgms_tvm.passes import LoweringPolicy, lower_codebook_layers
from dgms_tvm.quant import hard_quantize
from dgms_tvm.targets import get_profile
from tests.helpers import rel_err


class Net(nn.Module):
    """Every conv2d form the pass lowers, a Linear, and layers that must stay FP32."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)  # first conv: stays FP32
        self.bn = nn.BatchNorm2d(16)
        self.conv = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.dw = nn.Conv2d(32, 32, 3, padding=2, dilation=2, groups=32)
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4, bias=False)
        self.same = nn.Conv2d(32, 32, 3, padding=1, groups=4, bias=False)  # same spec
        self.fc = nn.Linear(32, 24)
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.dw(torch.relu(self.conv(x)))
        x = self.same(self.grouped(x))
        return self.head(torch.relu(self.fc(x.mean((2, 3)))))


def _quantized_net(bits=4, seed=0):
    torch.manual_seed(seed)
    net = Net().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 1.5)
    cbs = hard_quantize(net, bits, skip=("first_conv",))  # quantize fc too, keep head ...
    with torch.no_grad():  # ... then put the head back to FP32 values
        net.head.weight.normal_()
    cbs.pop("head.weight")
    return net, cbs


def _calls(mod):
    """(op name or callee attrs) of every call in main, in order."""
    out = []
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op):
                if v.op.name == "relax.call_tir":
                    out.append(("call_tir", mod[v.args[0]]))
                else:
                    out.append((v.op.name, None))
    return out


def _lower(model, x, bits=4, declared=None):
    imported = frontend.from_torch(model, (x,), declared)
    return imported, compiler.lower(imported, bits)


def test_structure_and_numbers():
    net, cbs = _quantized_net()
    x = torch.randn(1, 3, 12, 12)
    imported, lowered = _lower(net, x)
    calls = _calls(lowered.mod)
    kernels = [f for op, f in calls if op == "call_tir"]
    kinds = [(str(f.attrs[KERNEL_ATTR]), '"bits": 32' in str(f.attrs[SPEC_ATTR]))
             for f in kernels]
    # The FP32 stem conv and FP32 head run through the same kernels with float weights; the
    # depthwise conv through the depthwise kernel.
    assert kinds == [("cb_conv2d", True)] + [("cb_conv2d", False)] + [("dw_conv2d", False)] + [
        ("cb_conv2d", False)] * 2 + [("cb_dense", False), ("cb_dense", True)]
    assert not [op for op, _ in calls if op in ("relax.nn.conv2d", "relax.matmul")]
    # Identical layers share one kernel function.
    names = {r.name: r.kernel for r in lowered.records}
    assert names["grouped.weight"] == names["same.weight"]
    assert len({r.kernel for r in lowered.records if r.lowered}) == 4
    # Every weight the pass replaced is gone from the module.
    assert all(p.name == "x" for p in lowered.mod["main"].params)
    # Records say what was done and why not.
    by_name = {r.name: r for r in lowered.records}
    stem = by_name["stem.weight"]
    assert not stem.lowered and "not a codebook" in stem.reason
    assert stem.fp32_kernel.startswith("fp32_conv2d_")
    assert by_name["dw.weight"].lowered and by_name["dw.weight"].bits == 4
    assert by_name["dw.weight"].kernel.startswith("dw_conv2d_")
    assert by_name["fc.weight"].op == "dense"
    assert by_name["conv.weight"].sparsity == pytest.approx(cbs["conv.weight"].sparsity())
    # Numbers: equal to the un-rewritten model and to PyTorch.
    target = get_profile("x86")
    got = compiler.run_local(compiler.build(lowered, target), [x.numpy()])[0]
    want = net(x).detach().numpy()
    assert rel_err(got, want) < 1e-4
    # The FP32 baselines: same kernels with float weights, and TVM's own lowering.
    for fp32_kernels in (True, False):
        base = compiler.lower(imported, codebooks=False, fp32_kernels=fp32_kernels)
        assert not any(r.lowered for r in base.records)
        assert all(bool(r.fp32_kernel) == fp32_kernels for r in base.records)
        got_base = compiler.run_local(compiler.build(base, target), [x.numpy()])[0]
        assert rel_err(got, got_base) < 1e-4


def test_fp32_layers_can_be_left_to_tvm():
    net, _ = _quantized_net()
    x = torch.randn(1, 3, 8, 8)
    imported = frontend.from_torch(net, (x,))
    lowered = compiler.lower(imported, 4, fp32_kernels=False)
    ops = [op for op, _ in _calls(lowered.mod)]
    assert ops.count("relax.nn.conv2d") == 1 and ops.count("relax.matmul") == 1
    assert ops.count("call_tir") == 5


class MatMulNet(nn.Module):
    """``x @ B`` with a constant B[K, N] and a 3-D input (an ONNX MatMul's shape)."""

    def __init__(self, b):
        super().__init__()
        self.b = nn.Parameter(torch.from_numpy(b))

    def forward(self, x):
        return torch.relu(x @ self.b)


def test_matmul_with_constant_kn_weight_and_batched_input():
    rng = np.random.default_rng(0)
    cb = np.array([0, -1.5, -0.5, 0.25, 1.0, 2.0, 3.0, -3.0], np.float32)
    b = cb[rng.integers(0, 8, size=(16, 12))]
    net = MatMulNet(b)
    x = torch.randn(2, 5, 16)
    _, lowered = _lower(net, x, bits=3)
    (rec,) = lowered.records
    assert rec.lowered and rec.op == "dense" and tuple(rec.shape) == (12, 16) and rec.bits == 3
    got = compiler.run_local(compiler.build(lowered, get_profile("x86")), [x.numpy()])[0]
    assert got.shape == (2, 5, 12)
    assert rel_err(got, net(x).detach().numpy()) < 1e-5


def test_bits_limit_skips_undeclared_layers():
    net, _ = _quantized_net(bits=4)
    _, lowered = _lower(net, torch.randn(1, 3, 8, 8), bits=2)
    assert not any(r.lowered for r in lowered.records)
    assert any("more than 3 for 2 bits" in r.reason for r in lowered.records)


def test_declared_layer_that_is_not_a_codebook_is_an_error():
    net, _ = _quantized_net(bits=4)
    with pytest.raises(UserError, match=r"stem.weight .declared 4-bit. is not a 4-bit codebook"):
        _lower(net, torch.randn(1, 3, 8, 8), declared={"stem.weight": 4})


def test_declared_width_is_enforced():
    net, _ = _quantized_net(bits=4)
    with pytest.raises(UserError, match=r"conv.weight .declared 2-bit. is not a 2-bit codebook"):
        _lower(net, torch.randn(1, 3, 8, 8), declared={"conv.weight": 2})


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 4, 3)

    def forward(self, x):
        return self.conv(x)


def test_unsupported_weighted_op_is_reported_and_kept():
    net = Conv1dNet().eval()
    with torch.no_grad():
        net.conv.weight.copy_(torch.sign(net.conv.weight))  # a 2-value codebook
    x = torch.randn(1, 4, 9)
    _, lowered = _lower(net, x)
    (rec,) = lowered.records
    assert rec.op == "conv1d" and not rec.lowered and "no codebook kernel" in rec.reason
    assert rec.fp32_kernel is None
    got = compiler.run_local(compiler.build(lowered, get_profile("x86")), [x.numpy()])[0]
    assert rel_err(got, net(x).detach().numpy()) < 1e-5


def test_pass_on_constants_bound_in_the_ir():
    # Weights folded into the IR as constants (no parameter names) are lowered too.
    net, _ = _quantized_net()
    x = torch.randn(1, 3, 8, 8)
    imported = frontend.from_torch(net, (x,))
    bound = relax.transform.BindParams(
        "main", {k: tvm.runtime.tensor(v) for k, v in imported.weights.items()})(imported.mod)
    records = []
    mod = lower_codebook_layers(LoweringPolicy({}, 4), records)(bound)
    assert sum(r.lowered for r in records) == 5
    assert all(r.name.startswith("constant_") for r in records)
    exe = compiler.build(compiler.Lowered(mod, records), get_profile("x86"))
    assert rel_err(compiler.run_local(exe, [x.numpy()])[0], net(x).detach().numpy()) < 1e-4


def test_int8_strategy_lowers_the_layers_it_can_and_says_why_not_the_rest():
    net, _ = _quantized_net()
    x = torch.randn(1, 3, 12, 12)
    imported = frontend.from_torch(net, (x,))
    exact = compiler.lower(imported, 4)
    lowered = compiler.lower(imported, 4, strategy="int8")
    by_name = {r.name: r for r in lowered.records}
    assert by_name["conv.weight"].strategy == "int8"
    assert by_name["conv.weight"].kernel.startswith("q8_conv2d_")
    for name in ("dw.weight", "grouped.weight"):
        assert by_name[name].strategy == "exact" and "groups" in by_name[name].reason
    assert by_name["fc.weight"].strategy == "exact"
    # Not a codebook: its FP32 weight quantized per channel, through the same int8 kernel (it
    # stays FP32 in the exact build and in the FP32 baseline).
    stem = by_name["stem.weight"]
    assert not stem.lowered and stem.strategy == "int8"
    assert stem.fp32_kernel.startswith("q8_conv2d_") and "_w8_pre" in stem.fp32_kernel
    assert {r.name: r for r in exact.records}["stem.weight"].strategy is None
    fp32 = compiler.lower(imported, 4, codebooks=False, strategy="int8")
    assert all(r.strategy is None for r in fp32.records)
    families = [str(f.attrs[KERNEL_ATTR]) for op, f in _calls(lowered.mod) if op == "call_tir"]
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
    unsigned = kint8.unsigned_input(host)
    recs = {r.name: r for r in for_host.records}
    assert ("_u8" in recs["conv.weight"].kernel) == unsigned
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
        kint8.unsigned_input(host)
    assert strategies.resolve("lut", n1) == "lut"  # asked for: never chosen by auto
    with pytest.raises(UserError, match=r"'fast'.*auto, exact, int8, int8-full, lut"):
        strategies.resolve("fast", n1)


class Block(nn.Module):
    """A ResNet block with a downsample (two convs lead to one add), a conv with a bias and
    relu6 (MobileNet), and a conv with nothing after it."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16)
        self.c2, self.bn2 = nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
        self.ds, self.bnd = nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16)
        self.c3 = nn.Conv2d(16, 16, 1)
        self.c4 = nn.Conv2d(16, 8, 1, bias=False)

    def forward(self, x):
        y = torch.relu(self.bn1(self.c1(x)))
        y = torch.relu(self.bn2(self.c2(y)) + self.bnd(self.ds(x)))
        y = nn.functional.relu6(self.c3(y))
        return self.c4(y).mean((2, 3))


def test_int8_convs_do_the_ops_after_them_as_they_write():
    torch.manual_seed(0)
    net = Block().eval()
    with torch.no_grad():
        for bn in (net.bn1, net.bn2, net.bnd):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
    hard_quantize(net, 4)
    x = torch.randn(1, 8, 12, 12)
    imported = frontend.from_torch(net, (x,))
    fused = compiler.lower(imported, 4, strategy="int8")
    steps = {r.name: r.epilogue for r in fused.records}
    assert steps == {"c1.weight": "batch_norm+relu", "c2.weight": "batch_norm+add+relu",
                     "ds.weight": "batch_norm", "c3.weight": "bias+relu6", "c4.weight": ""}
    assert fused.records[1].kernel.endswith("_bias_res_relu")
    ops = [op for op, _ in _calls(fused.mod)]
    assert not {"relax.nn.batch_norm", "relax.nn.relu", "relax.clip", "relax.add"} & set(ops)
    # The plain kernels the chains replaced are gone; each kernel's calls stay together.
    called = [f for op, f in _calls(fused.mod) if op == "call_tir"]
    prims = [f for _, f in fused.mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(prims) == len({tvm_ffi.structural_hash(f) for f in called})
    families = [str(f.attrs[KERNEL_ATTR]) for f in called]
    assert families == ["q8_quant", "q8_conv2d"] + ["q8_quant", "q8_decode", "q8_conv2d"] * 4
    # The same numbers as the unfused int8 build (float32 rounding of the folded BatchNorm),
    # and close to the exact build.
    records = []
    policy = LoweringPolicy(imported.weights, 4, imported.declared, imported.names,
                            strategy="int8", epilogues=False)
    mod = lower_codebook_layers(policy, records)(imported.mod)
    mod = relax.transform.BindParams("main", {n: tvm.runtime.tensor(v)
                                              for n, v in imported.weights.items()})(mod)
    assert "relax.nn.batch_norm" in [op for op, _ in _calls(mod)]
    host = get_profile("x86")
    got = compiler.run_local(compiler.build(fused, host), [x.numpy()])[0]
    plain = compiler.run_local(compiler.build(compiler.Lowered(mod, records), host),
                               [x.numpy()])[0]
    exact = compiler.run_local(compiler.build(compiler.lower(imported, 4), host),
                               [x.numpy()])[0]
    assert rel_err(got, plain) < 1e-5
    assert 0 < rel_err(got, exact) < 0.05


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
    called = [f for op, f in _calls(lowered.mod) if op == "call_tir"]
    quants = [json.loads(str(f.attrs[SPEC_ATTR])) for f in called
              if str(f.attrs[KERNEL_ATTR]) == "q8_quant"]
    assert len(quants) == 3 and all(q["depth"] == 16 for q in quants)
    host = get_profile("x86")
    got = compiler.run_local(compiler.build(lowered, host), [x.numpy()])[0]
    exact = compiler.run_local(compiler.build(compiler.lower(imported, 4), host),
                               [x.numpy()])[0]
    assert 0 < rel_err(got, exact) < 0.05


def _consts(mod):
    """The constant operands of ``main``'s calls."""
    out = []
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            if isinstance(b.value, relax.Call):
                for a in b.value.args:
                    out += [f for f in (a.fields if isinstance(a, relax.Tuple) else [a])
                            if isinstance(f, tvm.ir.GenericConst)]
    return out


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
            codebooks = [v for v in (c.value.numpy() for c in _consts(lowered.mod))
                         if v.dtype == np.int8 and v.size == 16]
            assert max(int(np.abs(q).max()) for q in codebooks) == (
                127 if strategy == "int8-full" else 63)
        outs[strategy] = compiler.run_local(compiler.build(lowered, host), [x.numpy()])[0]
    assert 0 < rel_err(outs["int8-full"], outs["exact"]) < rel_err(outs["int8"], outs["exact"])
    full_n1 = compiler.lower(imported, 4, strategy="int8-full", profile=n1)
    int8_n1 = compiler.lower(imported, 4, strategy="int8", profile=n1)
    assert [r.kernel for r in full_n1.records] == [r.kernel for r in int8_n1.records]
