"""The epilogue pass (``passes/epilogue.py``): the BatchNorm, bias,
residual add and relu / relu6 after a conv done by its kernel as it writes; structure and
numbers against the unfused build."""

import dataclasses

import numpy as np
import torch
import tvm
import tvm_ffi
from tvm import relax

from dgms_tvm import compiler, frontend
from dgms_tvm.kernels import KERNEL_ATTR
from dgms_tvm.kernels.common import FP32_WEIGHT
from dgms_tvm.kernels.conv import Conv2dSpec
from dgms_tvm.kernels.fp32 import depthwise as kdw
from dgms_tvm.passes import LoweringPolicy, fuse_epilogues, lower_codebook_layers
from dgms_tvm.quant import hard_quantize
from dgms_tvm.targets import get_profile
from tests.helpers import rel_err
from tests.passes.graphs import Block, main_calls


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
    relax.analysis.well_formed(fused.mod)  # raises where a var is used undefined
    steps = {r.name: r.epilogue for r in fused.records}
    assert steps == {"c1.weight": "batch_norm+relu", "c2.weight": "batch_norm+add+relu",
                     "ds.weight": "batch_norm", "c3.weight": "bias+relu6", "c4.weight": ""}
    assert fused.records[1].kernel.endswith("_bias_res_relu")
    ops = [op for op, _ in main_calls(fused.mod)]
    assert not {"relax.nn.batch_norm", "relax.nn.relu", "relax.clip", "relax.add"} & set(ops)
    # The plain kernels the chains replaced are gone; each kernel's calls stay together.
    called = [f for op, f in main_calls(fused.mod) if op == "call_tir"]
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
    assert "relax.nn.batch_norm" in [op for op, _ in main_calls(mod)]
    host = get_profile("x86")
    got = compiler.run_local(compiler.build(fused, host), [x.numpy()])[0]
    plain = compiler.run_local(compiler.build(compiler.Lowered(mod, records), host),
                               [x.numpy()])[0]
    exact = compiler.run_local(compiler.build(compiler.lower(imported, 4), host),
                               [x.numpy()])[0]
    assert rel_err(got, plain) < 1e-5
    assert 0 < rel_err(got, exact) < 0.05


def _depthwise_module(after):
    """``main``: a depthwise conv kernel (FP32 weight), then what ``after(bb, y)`` emits."""
    spec = kdw.DepthwiseSpec(Conv2dSpec(1, 8, 6, 6, 8, (3, 3), padding=(1, 1, 1, 1), groups=8,
                                        bits=FP32_WEIGHT))
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 9)).astype(np.float32)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 6, 6), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            gv = bb.add_func(kdw.compute(spec), spec.name)
            y = bb.emit(relax.call_tir(gv, [x, relax.const(w), relax.const(np.zeros(8,
                                                                                 np.float32))],
                                       out_ty=relax.TensorType((1, 8, 6, 6), "float32")))
            out = bb.emit_output(after(bb, y))
        bb.emit_func_output(out)
    return bb.get(), spec, w


def _bn_params():
    rng = np.random.default_rng(1)
    return [rng.uniform(0.5, 1.5, 8), rng.uniform(-0.3, 0.3, 8), rng.uniform(-0.2, 0.2, 8),
            rng.uniform(0.5, 1.5, 8)]


def _bn_relu6(bb, y):
    bn = bb.emit(relax.op.nn.batch_norm(y, *(relax.const(p.astype(np.float32))
                                             for p in _bn_params()), axis=1, epsilon=1e-5,
                                        training=False))
    return bb.emit(relax.op.clip(bb.emit(relax.TupleGetItem(bn, 0)), 0.0, 6.0))


def test_fuse_epilogues_before_and_expected():
    """The BatchNorm and relu6 after a depthwise conv become its kernel's: W scaled by the
    BatchNorm's g per channel, B its shift, the kernel the relu6 one; numbers unchanged."""
    before, spec, w = _depthwise_module(_bn_relu6)
    after = fuse_epilogues()(before)
    gamma, beta, mean, var = (p.astype(np.float32).astype(np.float64) for p in _bn_params())
    g = gamma / np.sqrt(var + 1e-5)
    fused = dataclasses.replace(spec, act="relu6")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 6, 6), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            gv = bb.add_func(kdw.compute(fused), fused.name)
            out = bb.emit_output(bb.emit(relax.call_tir(gv, [
                x, relax.const((w * g[:, None]).astype(np.float32)),
                relax.const((beta - mean * g).astype(np.float32))],
                out_ty=relax.TensorType((1, 8, 6, 6), "float32"))))
        bb.emit_func_output(out)
    tvm.ir.assert_structural_equal(after, bb.get())
    xs = np.random.default_rng(2).standard_normal((1, 8, 6, 6)).astype(np.float32)
    host = get_profile("x86")
    got, want = (compiler.run_local(compiler.build(compiler.Lowered(m, []), host), [xs])[0]
                 for m in (after, before))
    assert rel_err(got, want) < 1e-6 and got.max() <= 6.0


def test_fuse_epilogues_leaves_a_conv_read_twice():
    """A conv whose output is read twice keeps its plain kernel: fused, the kernel would
    write only the relu's value."""

    def two_users(bb, y):
        return bb.emit(relax.op.add(bb.emit(relax.op.nn.relu(y)), y))

    before, _, _ = _depthwise_module(two_users)
    tvm.ir.assert_structural_equal(fuse_epilogues()(before), before)


class _ProjectThenConv(torch.nn.Module):
    """A MobileNetV2 block's end: a conv whose chain ends in its BatchNorm (no activation),
    read by the input quantize of the next int8 conv, which has a chain of its own."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn = torch.nn.Conv2d(8, 16, 1, bias=False), torch.nn.BatchNorm2d(16)
        self.c2, self.bn2 = torch.nn.Conv2d(16, 8, 1, bias=False), torch.nn.BatchNorm2d(8)

    def forward(self, x):
        return torch.nn.functional.relu6(self.bn2(self.c2(self.bn(self.c1(x)))))


def test_a_chain_ending_in_a_batch_norm_feeds_the_next_int8_conv():
    torch.manual_seed(0)
    net = _ProjectThenConv().eval()
    hard_quantize(net, 4)
    x = torch.randn(1, 8, 6, 6)
    imported = frontend.from_torch(net, (x,))
    fused = compiler.lower(imported, 4, strategy="int8")
    relax.analysis.well_formed(fused.mod)  # raises where a var is used undefined
    assert [r.epilogue for r in fused.records] == ["batch_norm", "batch_norm+relu6"]
    got = compiler.run_local(compiler.build(fused, get_profile("x86")), [x.numpy()])[0]
    assert rel_err(got, net(x).detach().numpy()) < 0.05
