"""Zero skipping at channel level: input channels / features whose codebook weights are all
zero are dropped at compile time (DGMS's pinned zero component), in every strategy."""

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax

from dgms_tvm import compiler
from dgms_tvm.detect import find_codebook
from dgms_tvm.format import CodebookWeight
from dgms_tvm.frontend import from_torch
from dgms_tvm.kernels.conv import Conv2dSpec
from dgms_tvm.kernels.fp32 import conv2d as kconv
from dgms_tvm.passes import LoweringPolicy, lower_codebook_layers
from dgms_tvm.targets import get_profile
from tests.helpers import random_codebook_weight, rel_err
from tests.passes.graphs import relax_main

HOST = get_profile("x86")


def _pruned_net(rng, dead_in=(1, 4, 5, 12), dead_features=tuple(range(0, 128, 2))):
    """conv 16 -> 32 (3x3) whose input channels ``dead_in`` have all-zero weights, then a
    dense 32*4*4 -> 10 whose ``dead_features`` (64: at 10 outputs dropping fewer would not
    pay for the copy) have; all codebooks of 4 bits."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(32 * 4 * 4, 10)).eval()
    conv = random_codebook_weight(rng, (32, 16, 3, 3), 4)
    fc = random_codebook_weight(rng, (10, 512), 4, scaled=True)
    wc, wf = conv.dense(), fc.dense()
    wc[:, list(dead_in)] = 0
    wf[:, list(dead_features)] = 0
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(wc))
        net[4].weight.copy_(torch.from_numpy(wf))
    return net


@pytest.mark.parametrize("strategy", ["exact", "int8", "lut"])
def test_all_zero_input_channels_are_dropped(strategy, rng):
    net = _pruned_net(rng)
    x = rng.normal(size=(1, 16, 8, 8)).astype(np.float32)
    imported = from_torch(net, (torch.from_numpy(x),))
    lowered = compiler.lower(imported, 4, strategy=strategy, profile=HOST)
    conv, fc = lowered.records
    assert (conv.zero_inputs, fc.zero_inputs) == (4, 64)
    assert "_c12_" in conv.kernel and "k448" in fc.kernel  # the kernels reduce over the rest
    # the layer's sparsity counts the dropped channels' zeros too
    assert conv.sparsity >= 4 / 16 and fc.sparsity >= 64 / 512
    got = compiler.run_local(compiler.build(lowered, HOST), [x])[0]
    kept = compiler.lower(imported, 4, strategy=strategy, profile=HOST,
                          zero_skip=False)
    assert kept.records[0].zero_inputs == 0 and "_c16_" in kept.records[0].kernel
    same = compiler.run_local(compiler.build(kept, HOST), [x])[0]
    want = net(torch.from_numpy(x)).detach().numpy()
    if strategy == "int8":  # the same integer sums over the kept channels
        assert rel_err(got, same) < 1e-5 and rel_err(got, want) < 0.05
    else:
        assert rel_err(got, want) < 1e-5 and rel_err(same, want) < 1e-5


def test_dropping_must_pay(rng):
    """A 1x1 conv to 1 output channel with dead inputs (channel 3, and any other whose one
    index is the zero entry): dropping ``d`` of 16 saves ``d`` multiply-adds per pixel and
    copies ``16 - d`` inputs per pixel, so nothing is dropped."""
    conv = nn.Conv2d(16, 1, 1, bias=False).eval()
    cw = random_codebook_weight(rng, (1, 16, 1, 1), 4)
    w = cw.dense()
    w[:, 3] = 0
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(w))
    x = rng.normal(size=(1, 16, 4, 4)).astype(np.float32)
    (rec,) = compiler.lower(from_torch(conv, (torch.from_numpy(x),)), 4).records
    d = int((w == 0).sum())
    assert 1 <= d < 8 and rec.zero_inputs == 0
    assert f"{d} all-zero input channels kept" in rec.reason
    assert "_c16_" in rec.kernel


def test_before_and_expected(rng):
    """Input channel 1's weights all zero: the input is gathered down to channels 0, 2, 3
    (one ``take``) and the conv runs on them, its indices without that channel."""
    cw0 = random_codebook_weight(rng, (16, 4, 3, 3), 4)
    w = cw0.dense()
    w[:, 1] = 0
    shapes = {"x": (1, 4, 6, 6), "w": w.shape}
    before = relax_main(shapes, lambda bb, x, wv: bb.emit(
        relax.op.nn.conv2d(x, wv, padding=1)))
    records = []
    after = lower_codebook_layers(LoweringPolicy({"w": w}, 4), records)(before)
    cw = find_codebook(w, 4)
    keep = np.array([0, 2, 3])
    kept = CodebookWeight.from_indices(cw.indices().take(keep, axis=1), cw.codebook, cw.bits)
    spec = Conv2dSpec(1, 3, 6, 6, 16, (3, 3), padding=(1, 1, 1, 1), bits=cw.bits)

    def expected(bb, x, _w):
        gv = bb.add_func(kconv.compute(spec), spec.name)
        xk = bb.emit(relax.op.take(x, relax.const(keep.astype(np.int64)), axis=1))
        return bb.emit(relax.call_tir(gv, [xk, relax.const(kept.packed),
                                           relax.const(kept.codebook)],
                                      out_ty=relax.TensorType(spec.out_shape, "float32")))

    tvm.ir.assert_structural_equal(after, relax_main(shapes, expected))
    assert records[0].zero_inputs == 1
    xs = rng.normal(size=(1, 4, 6, 6)).astype(np.float32)
    mod = relax.transform.BindParams("main", {"w": tvm.runtime.tensor(w)})(after)
    got = compiler.run_local(compiler.build(compiler.Lowered(mod, records), HOST), [xs])[0]
    want = nn.functional.conv2d(torch.from_numpy(xs), torch.from_numpy(w), padding=1).numpy()
    assert rel_err(got, want) < 1e-5
