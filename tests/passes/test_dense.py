"""The dense piece of the lowering (``passes/dense.py``): a matmul with a constant weight,
in either layout, to a dense kernel; structure and numbers."""


import numpy as np
import torch
from torch import nn

from dgms_tvm import compiler
from dgms_tvm.targets import get_profile
from tests.helpers import rel_err
from tests.passes.graphs import lower_model


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
