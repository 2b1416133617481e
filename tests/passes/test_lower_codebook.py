"""The codebook lowering pass (``passes/lower_codebook.py``) on small graphs: structure
(which ops were replaced, by what) and numbers (equal to the un-rewritten model)."""


import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax

from dgms_tvm import compiler, frontend
from dgms_tvm.detect import find_codebook
from dgms_tvm.errors import UserError
from dgms_tvm.kernels import KERNEL_ATTR, SPEC_ATTR
from dgms_tvm.kernels.fp32 import conv2d as kconv
from dgms_tvm.passes import LoweringPolicy, lower_codebook_layers
from dgms_tvm.targets import get_profile
from tests.helpers import random_codebook_weight, rel_err
from tests.passes.graphs import lower_model, main_calls, quantized_net, relax_main


def test_structure_and_numbers():
    net, cbs = quantized_net()
    x = torch.randn(1, 3, 12, 12)
    imported, lowered = lower_model(net, x)
    calls = main_calls(lowered.mod)
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
    net, _ = quantized_net()
    x = torch.randn(1, 3, 8, 8)
    imported = frontend.from_torch(net, (x,))
    lowered = compiler.lower(imported, 4, fp32_kernels=False)
    ops = [op for op, _ in main_calls(lowered.mod)]
    assert ops.count("relax.nn.conv2d") == 1 and ops.count("relax.matmul") == 1
    assert ops.count("call_tir") == 5

def test_bits_limit_skips_undeclared_layers():
    net, _ = quantized_net(bits=4)
    _, lowered = lower_model(net, torch.randn(1, 3, 8, 8), bits=2)
    assert not any(r.lowered for r in lowered.records)
    assert any("more than 3 for 2 bits" in r.reason for r in lowered.records)

def test_declared_layer_that_is_not_a_codebook_is_an_error():
    net, _ = quantized_net(bits=4)
    with pytest.raises(UserError, match=r"stem.weight .declared 4-bit. is not a 4-bit codebook"):
        lower_model(net, torch.randn(1, 3, 8, 8), declared={"stem.weight": 4})

def test_declared_width_is_enforced():
    net, _ = quantized_net(bits=4)
    with pytest.raises(UserError, match=r"conv.weight .declared 2-bit. is not a 2-bit codebook"):
        lower_model(net, torch.randn(1, 3, 8, 8), declared={"conv.weight": 2})

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
    _, lowered = lower_model(net, x)
    (rec,) = lowered.records
    assert rec.op == "conv1d" and not rec.lowered and "no codebook kernel" in rec.reason
    assert rec.fp32_kernel is None
    got = compiler.run_local(compiler.build(lowered, get_profile("x86")), [x.numpy()])[0]
    assert rel_err(got, net(x).detach().numpy()) < 1e-5

def test_pass_on_constants_bound_in_the_ir():
    # Weights folded into the IR as constants (no parameter names) are lowered too.
    net, _ = quantized_net()
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


def test_conv2d_before_and_expected():
    """A conv2d whose weight parameter is a 4-bit codebook becomes one call of the codebook
    conv kernel on the packed indices and the codebook; numbers as the conv's."""
    rng = np.random.default_rng(0)
    w = random_codebook_weight(rng, (8, 4, 3, 3), 4).dense()
    shapes = {"x": (1, 4, 6, 6), "w": w.shape}
    before = relax_main(shapes, lambda bb, x, wv: bb.emit(
        relax.op.nn.conv2d(x, wv, strides=2, padding=1)))
    records = []
    after = lower_codebook_layers(LoweringPolicy({"w": w}, 4, zero_skip=False),
                                  records)(before)
    cw = find_codebook(w, 4)
    spec = kconv.Conv2dSpec(1, 4, 6, 6, 8, (3, 3), stride=(2, 2), padding=(1, 1, 1, 1),
                            bits=cw.bits)

    def expected(bb, x, _w):
        gv = bb.add_func(kconv.compute(spec), spec.name)
        return bb.emit(relax.call_tir(gv, [x, relax.const(cw.packed), relax.const(cw.codebook)],
                                      out_ty=relax.TensorType(spec.out_shape, "float32")))

    tvm.ir.assert_structural_equal(after, relax_main(shapes, expected))
    assert [(r.name, r.kernel) for r in records] == [("w", spec.name)]
    xs = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
    mod = relax.transform.BindParams("main", {"w": tvm.runtime.tensor(w)})(after)
    got = compiler.run_local(compiler.build(compiler.Lowered(mod, records),
                                            get_profile("x86")), [xs])[0]
    want = nn.functional.conv2d(torch.from_numpy(xs), torch.from_numpy(w), stride=2,
                                padding=1).numpy()
    assert rel_err(got, want) < 1e-5
