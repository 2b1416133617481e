"""ONNX ``Clip`` as Relax's relu / clip (``passes/onnx_clip.py``): on a model exported by
``torch.onnx.export`` (BatchNorm folded), a conv's ReLU6 reaches the epilogue pass, and every
Clip keeps onnxruntime's numbers."""

import onnxruntime as ort
import pytest
import torch
import tvm
from torch import nn
from tvm import relax

from dgms_tvm import compiler, frontend
from dgms_tvm.kernels import KERNEL_ATTR
from dgms_tvm.passes.onnx_clip import elementwise
from dgms_tvm.targets import get_profile
from tests.helpers import rel_err
from tests.passes.graphs import main_calls


class Clips(nn.Module):
    """ReLU6 after a conv + BatchNorm, a plain ReLU, a hardtanh (Clip -1, 1), a clamp with
    only a lower bound (a lone maximum against 0.25) and a ReLU6 whose input is read twice."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, x):
        y = nn.functional.relu6(self.bn(self.conv(x)))
        y = nn.functional.hardtanh(self.dw(y)) + torch.relu(y)
        z = torch.clamp(y, min=0.25)
        return nn.functional.relu6(z) + z


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    net = Clips().eval()
    with torch.no_grad():
        net.bn.running_var.uniform_(0.5, 1.5)
    x = torch.randn(1, 3, 10, 10) * 3
    path = tmp_path_factory.mktemp("clip") / "clips.onnx"
    path.write_bytes(frontend.onnx_bytes(net, (x,)))
    return net, x.numpy(), path


def _ops(mod):
    return [op if f is None else f.attrs.get(KERNEL_ATTR, "te") for op, f in main_calls(mod)]


def test_clips_become_relax_clip_and_relu(exported):
    _, _, path = exported
    mod = frontend.load_onnx(path).mod
    ops = _ops(mod)
    assert ops.count("relax.clip") == 3  # relu6, hardtanh, the last relu6
    assert "relax.nn.relu" in ops
    assert ops.count("relax.isnan") == 1  # only the lone clamp's bound keeps its guard
    kinds = [elementwise(mod[b.value.args[0]]) for b in mod["main"].body.blocks[0].bindings
             if isinstance(b.value, relax.Call) and b.value.op == tvm.ir.Op.get("relax.call_tir")]
    assert kinds == ["max"]  # the clamp with a lower bound only stays as it was
    bounds = [tuple(float(v.value) for v in b.value.args[1:3])
              for b in mod["main"].body.blocks[0].bindings
              if isinstance(b.value, relax.Call) and b.value.op == tvm.ir.Op.get("relax.clip")]
    assert sorted(bounds) == [(-1.0, 1.0), (0.0, 6.0), (0.0, 6.0)]


def test_the_relu6_after_a_conv_is_its_epilogue_and_numbers_hold(exported):
    """The int8 build's first conv (its weight int8 per channel) takes the folded BatchNorm
    and the ReLU6 as its epilogue; the exact build's output is onnxruntime's."""
    net, x, path = exported
    imported = frontend.load_onnx(path)
    host = get_profile("x86")
    lowered = compiler.lower(imported, strategy="int8", profile=host)
    names = [r.fp32_kernel for r in lowered.records if r.fp32_kernel]
    assert any(n.startswith("q8_conv2d") and n.endswith("_bias_relu6") for n in names), names
    sess = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"input": x})[0]
    got = compiler.run_local(compiler.build(compiler.lower(imported), host), [x])[0]
    assert rel_err(got, want) < 1e-5
    with torch.no_grad():
        assert rel_err(net(torch.from_numpy(x)).numpy(), want) < 1e-5


def test_only_elementwise_max_min_against_a_scalar_are_recognised():
    a = relax.Var("a", relax.TensorType((4,), "float32"))
    b = relax.Var("b", relax.TensorType((4,), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [a, b]):
        two = bb.emit_te(tvm.topi.maximum, a, b)  # a tensor bound, not a 0-d one
        out = bb.emit_te(tvm.topi.add, two, 1.0)
        bb.emit_func_output(out)
    mod = bb.get()
    funcs = [f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert [elementwise(f) for f in funcs] == ["", ""]
