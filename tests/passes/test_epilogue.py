"""The epilogue piece of the lowering (``passes/epilogue.py``): the BatchNorm, bias,
residual add and relu / relu6 after a conv done by its kernel as it writes; structure and
numbers against the unfused build."""


import torch
import tvm
import tvm_ffi
from tvm import relax

from dgms_tvm import compiler, frontend
from dgms_tvm.kernels import KERNEL_ATTR
from dgms_tvm.passes import LoweringPolicy, lower_codebook_layers
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
