"""int8 between layers (``passes/int8_chain.py``): which depthwise convs write the next int8
conv's input, at which calibrated scale, and the numbers against the build that quantizes
every int8 conv's input at run time, on a model we did not shape for it: an inverted-residual
network exported to ONNX with its BatchNorms folded, its layers 2-, 3- and 4-bit, one codebook
with entries no weight uses."""

import collections

import numpy as np
import pytest
import torch
from torch import nn

from dgms_tvm import calibration, compiler, frontend, strategies
from dgms_tvm.kernels import KERNEL_ATTR
from dgms_tvm.kernels.fp32 import depthwise as kdw
from dgms_tvm.kernels.int8 import depthwise as kdw8
from dgms_tvm.kernels.int8 import depthwise_rows as kdwr
from dgms_tvm.passes import int8_chain
from dgms_tvm.quant.hard import kmeans_codebook
from dgms_tvm.targets import get_profile
from tests.helpers import NEEDS_VNNI, WITHOUT_VNNI, rel_err
from tests.passes.graphs import main_calls


class Inverted(nn.Module):
    """MobileNetV2's block: 1x1 expand, relu6, 3x3 depthwise, relu6, 1x1 project (+ input)."""

    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        mid = cin * expand
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid),
            nn.ReLU6(),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class Net(nn.Module):
    def __init__(self, tap=False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU6())
        self.blocks = nn.Sequential(Inverted(16, 16, 1, 4), Inverted(16, 24, 2, 4),
                                    Inverted(24, 24, 1, 4))
        self.fc = nn.Linear(24, 10)
        self.tap = tap  # the last depthwise conv's output read by the head too

    def forward(self, x):
        x = self.stem(x)
        if not self.tap:
            return self.fc(self.blocks(x).mean((2, 3)))
        x = self.blocks[1](self.blocks[0](x))
        last = self.blocks[2].body
        mid = last[:6](x)  # the last depthwise conv's output (after its relu6) ...
        y = x + last[6:](mid)
        return self.fc(y.mean((2, 3)) + mid.mean((2, 3))[:, :24])  # ... read by the head


def dgms_net(seed=0, tap=False):
    """Trained-looking statistics, then DGMS codebooks: 2, 3 and 4 bits by layer; one 4-bit
    layer whose codebook has entries no weight uses (its weights snapped to 5 of 16)."""
    torch.manual_seed(seed)
    net = Net(tap).eval()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)][1:]  # the stem stays FP32
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
        for i, m in enumerate(convs):
            cw = kmeans_codebook(m.weight.numpy(), (2, 3, 4)[i % 3])
            w = cw.dense()
            if i == 4:  # 5 of the 16 entries used
                w = kmeans_codebook(w, 4).codebook[np.minimum(cw.indices(), 4)]
            m.weight.copy_(torch.from_numpy(np.asarray(w, np.float32)))
    return net


def onnx_import(net, x, tmp_path):
    path = tmp_path / "net.onnx"
    path.write_bytes(frontend.onnx_bytes(net, (x,)))  # BatchNorm folded into the convs
    return frontend.load_onnx(path)


def families(mod):
    return collections.Counter(str(f.attrs[KERNEL_ATTR]) for op, f in main_calls(mod)
                               if op == "call_tir" and KERNEL_ATTR in f.attrs)


@pytest.fixture(scope="module")
def user_model(tmp_path_factory):
    net = dgms_net()
    x = torch.randn(1, 3, 32, 32)
    return net, x, onnx_import(net, x, tmp_path_factory.mktemp("onnx"))


@pytest.mark.parametrize("target,depth,dw,expand", [
    ("neoverse-n1", 4, kdw8, 3), ("cortex-a72", 16, kdw8, 3),
    pytest.param("x86", 4, kdwr, 2, marks=NEEDS_VNNI),
    pytest.param("x86", 4, kdw, 0, marks=WITHOUT_VNNI)])
def test_each_depthwise_conv_writes_the_next_convs_input(user_model, target, depth, dw,
                                                         expand):
    """The depthwise convs write the project convs' input; where they are int8 themselves
    (aarch64: in the channel groups of the core's int8 conv; x86 with VNNI: rows of one
    channel) the expand convs write theirs (on x86 those 9 columns wide or more: the last
    block's, 8 wide, keeps its run-time quantize)."""
    _, x, imported = user_model
    profile = get_profile(target)
    plain = compiler.lower(imported, strategy="int8", profile=profile)
    chained = compiler.lower(imported, strategy="int8", profile=profile,
                             calibration=calibration.samples(x.numpy()))
    before, after = families(plain.mod), families(chained.mod)
    assert before[dw.FAMILY] == after[dw.FAMILY] == 3
    # each project conv's quantize, and each depthwise conv's its expand conv writes
    assert after["q8_quant"] == before["q8_quant"] - 3 - expand
    spec = {kdw8: kdw8.Int8DwSpec, kdwr: kdwr.RowsDwSpec, kdw: kdw.DepthwiseSpec}[dw]
    dws = [f for op, f in main_calls(chained.mod)
           if op == "call_tir" and str(f.attrs.get(KERNEL_ATTR, "")) == dw.FAMILY]
    outs = [spec.from_func(f).out for f in dws]
    assert all(o is not None and o.depth == depth for o in outs)
    assert all(o.offset == (128 if profile.is_x86 and profile.vnni else 0) for o in outs)
    recs = [r for r in chained.records if r.kernel and r.kernel.startswith(dw.FAMILY)]
    assert len(recs) == 3 and all("int8 for the next int8 conv" in r.output for r in recs)
    assert all("_to_q8_quant_" in r.kernel for r in recs)
    expand_recs = [r for r in chained.records if "_relu6_to_q8_quant_" in (r.kernel or "")
              and r.kernel.startswith(("q8_conv2d", "q8l_conv2d"))]
    assert len(expand_recs) == expand
    assert not any(r.output for r in plain.records)


def test_chained_build_matches_the_run_time_quantize(user_model):
    """On inputs other than the calibration ones (drawn around another example): within
    1.2x the plain int8 build's error against PyTorch (plus 0.2 % of the largest logit) and
    the same top-1 on every input."""
    net, x, imported = user_model
    host = get_profile("x86")
    plain = compiler.build(compiler.lower(imported, strategy="int8", profile=host), host)
    chained = compiler.build(compiler.lower(
        imported, strategy="int8", profile=host,
        calibration=calibration.samples(x.numpy())), host)
    tests = calibration.samples(torch.randn(1, 3, 32, 32).numpy(), 24, seed=7)
    errs, agree = [], 0
    for t in tests:
        with torch.no_grad():
            want = net(torch.from_numpy(t)).numpy()
        a = compiler.run_local(plain, [t])[0]
        b = compiler.run_local(chained, [t])[0]
        errs.append((rel_err(a, want), rel_err(b, want)))
        agree += int(a.argmax() == b.argmax() == want.argmax())
    plain_err, chained_err = np.max(errs, axis=0)
    assert chained_err <= 1.2 * plain_err + 0.002, (plain_err, chained_err)
    assert agree >= len(tests) - 1


def test_levels_are_the_largest_outputs_on_the_calibration_inputs(user_model):
    _, x, imported = user_model
    host = get_profile("x86")
    lowered = compiler.lower(imported, strategy="int8", profile=host)
    probe, count = int8_chain.probe(lowered.mod)
    # the 3 depthwise convs; with VNNI the 2 expand convs 9 columns wide or more too
    assert count == (5 if host.vnni else 3)
    exe = compiler.build(compiler.Lowered(probe, []), host)
    outs = compiler.run_local(exe, [x.numpy()])
    plain = compiler.run_local(compiler.build(lowered, host), [x.numpy()])[0]
    np.testing.assert_array_equal(outs[0], plain)  # its own output first, unchanged
    levels = [float(np.abs(o).max()) for o in outs[-count:]]
    assert all(0 < v <= 6 for v in levels)  # relu6
    # a level of 0 (an output never seen positive) keeps that conv's run-time quantize
    kept = int8_chain.chain_int8([levels[0], 0.0, *levels[2:]])(lowered.mod)
    assert families(kept)["q8_quant"] == families(lowered.mod)["q8_quant"] - (count - 1)
    with pytest.raises(ValueError, match="not the module that was calibrated"):
        int8_chain.chain_int8(levels[:2])(lowered.mod)
    assert int8_chain.fixed_scale(9.0, 6.0) == pytest.approx(6.0 / 127)


def test_a_depthwise_output_read_elsewhere_stays_float(tmp_path):
    """The last block's depthwise output also read by the head: its readers are not all
    int8 convs, so it keeps float32 (and the project conv its run-time quantize)."""
    net = dgms_net(tap=True)
    x = torch.randn(1, 3, 32, 32)
    imported = frontend.from_torch(net, (x,))
    host = get_profile("x86")
    lowered = compiler.lower(imported, strategy="int8", profile=host,
                             calibration=calibration.samples(x.numpy(), 2))
    # int8 with VNNI, else FP32
    family = strategies.for_core(strategies.INT8_DW, host) or kdw.FAMILY
    dws = [r for r in lowered.records if r.kernel and r.kernel.startswith(family)]
    assert [bool(r.output) for r in dws] == [True, True, False]


def test_no_calibration_or_no_int8_conv_keeps_float_outputs(user_model):
    _, x, imported = user_model
    cal = calibration.samples(x.numpy(), 2)
    exact = compiler.lower(imported, strategy="exact", calibration=cal)
    assert not any(r.output for r in exact.records)
    fp32 = compiler.lower(imported, codebooks=False, strategy="int8", calibration=cal)
    assert not any(r.output for r in fp32.records)


def test_a_depthwise_conv_feeding_an_exact_conv_is_no_candidate():
    """A depthwise conv feeding a conv of 2 groups of 3 output channels (no int8 conv takes
    it: it stays exact, no int8 conv reads the depthwise conv's output): no probe, no
    change."""
    from dgms_tvm.quant import hard_quantize

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
                        nn.Conv2d(16, 6, 1, groups=2)).eval()
    hard_quantize(net, 4)
    x = torch.randn(1, 3, 12, 12)
    imported = frontend.from_torch(net, (x,))
    lowered = compiler.lower(imported, 4, strategy="int8")
    assert {r.name: r.strategy for r in lowered.records}["4.weight"] == "exact"
    assert int8_chain.probe(lowered.mod)[1] == 0
    again = compiler.lower(imported, 4, strategy="int8",
                           calibration=calibration.samples(x.numpy(), 2))
    assert families(again.mod) == families(lowered.mod)
    assert not any(r.output for r in again.records)
