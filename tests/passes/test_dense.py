"""The dense piece of the lowering (``passes/dense.py``): a matmul with a constant weight,
in either layout, to a dense kernel; structure and numbers."""


import numpy as np
import torch
import tvm
from torch import nn
from tvm import relax

from dgms_tvm import compiler
from dgms_tvm.detect import find_codebook
from dgms_tvm.kernels.fp32 import dense as kdense
from dgms_tvm.passes import LoweringPolicy, lower_codebook_layers
from dgms_tvm.targets import get_profile
from tests.helpers import random_codebook_weight, rel_err
from tests.passes.graphs import lower_model, relax_main


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
    _, lowered = lower_model(net, x, bits=3)
    (rec,) = lowered.records
    assert rec.lowered and rec.op == "dense" and tuple(rec.shape) == (12, 16) and rec.bits == 3
    got = compiler.run_local(compiler.build(lowered, get_profile("x86")), [x.numpy()])[0]
    assert got.shape == (2, 5, 12)
    assert rel_err(got, net(x).detach().numpy()) < 1e-5


def test_before_and_expected():
    """``x @ permute_dims(W)`` (a Linear) with a 3-bit codebook W[N, K] becomes one call of
    the codebook dense kernel (no target: the generic one)."""
    rng = np.random.default_rng(1)
    w = random_codebook_weight(rng, (10, 24), 3).dense()
    shapes = {"x": (1, 24), "w": w.shape}
    before = relax_main(shapes, lambda bb, x, wv: bb.emit(
        relax.op.matmul(x, bb.emit(relax.op.permute_dims(wv, [1, 0])))))
    records = []
    after = lower_codebook_layers(LoweringPolicy({"w": w}, 3), records)(before)
    cw = find_codebook(w, 3)
    spec = kdense.DenseSpec(1, 10, 24, bits=cw.bits)

    def expected(bb, x, _w):
        gv = bb.add_func(kdense.compute(spec), spec.name)
        return bb.emit(relax.call_tir(gv, [x, relax.const(cw.packed), relax.const(cw.codebook)],
                                      out_ty=relax.TensorType((1, 10), "float32")))

    tvm.ir.assert_structural_equal(after, relax_main(shapes, expected))
    xs = rng.standard_normal((1, 24)).astype(np.float32)
    mod = relax.transform.BindParams("main", {"w": tvm.runtime.tensor(w)})(after)
    got = compiler.run_local(compiler.build(compiler.Lowered(mod, records),
                                            get_profile("x86")), [xs])[0]
    assert rel_err(got, xs @ w.T) < 1e-5
