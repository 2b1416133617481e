"""The BatchNorm fold (``passes/batchnorm.py``): an inference BatchNorm no conv took becomes a
multiply-add with its scale and shift computed at compile time; numbers against NumPy's
BatchNorm, over layouts, the BatchNorm's options and extreme statistics."""

import numpy as np
import pytest
import torch
from tvm import relax

from dgms_tvm import compiler, frontend
from dgms_tvm.passes.batchnorm import fold_batch_norm
from dgms_tvm.targets import get_profile
from tests.helpers import rel_err
from tests.passes.graphs import main_calls

HOST = get_profile("x86")


def _reference(x, gamma, beta, mean, var, eps, axis):
    shape = [1] * x.ndim
    shape[axis] = -1
    g, b, m, v = (np.asarray(p, np.float64).reshape(shape) for p in (gamma, beta, mean, var))
    return (x.astype(np.float64) - m) / np.sqrt(v + eps) * g + b


def _module(shape, axis, params, eps=1e-5, center=True, scale=True, const=True):
    """``main(x[, gamma])``: BatchNorm over ``axis`` of ``x``, then relu6."""
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    c = shape[axis]
    args = [relax.const(p.astype(np.float32)) for p in params]
    inputs = [x]
    if not const:  # gamma an input of main, not a constant
        inputs.append(relax.Var("gamma", relax.TensorType((c,), "float32")))
        args[0] = inputs[-1]
    bb = relax.BlockBuilder()
    with bb.function("main", inputs):
        with bb.dataflow():
            bn = bb.emit(relax.op.nn.batch_norm(x, *args, axis=axis, epsilon=eps,
                                                center=center, scale=scale, training=False))
            y = bb.emit(relax.op.clip(bb.emit(relax.TupleGetItem(bn, 0)), -6.0, 6.0))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _params(c, rng, var=None, gamma=None):
    return [rng.uniform(0.5, 1.5, c) if gamma is None else gamma, rng.uniform(-0.3, 0.3, c),
            rng.uniform(-0.2, 0.2, c), rng.uniform(0.5, 1.5, c) if var is None else var]


def _run(mod, x):
    lowered = compiler.Lowered(mod, [])
    return compiler.run_local(compiler.build(lowered, HOST), [x])[0]


CASES = {  # name: (shape, axis, params maker, options)
    "nchw": ((1, 5, 4, 3), 1, lambda r: _params(5, r), {}),
    "nhwc": ((1, 4, 3, 7), 3, lambda r: _params(7, r), {}),
    "negative-axis": ((2, 6, 3), -1, lambda r: _params(3, r), {}),
    "no-scale-no-center": ((1, 5, 4, 3), 1, lambda r: _params(5, r), {"center": False,
                                                                      "scale": False}),
    "zero-variance": ((1, 5, 4, 3), 1, lambda r: _params(5, r, var=np.zeros(5)), {}),
    "huge-gamma": ((1, 5, 4, 3), 1,
                   lambda r: _params(5, r, gamma=np.array([1e4, -1e4, 1e-4, 0.0, 1.0])),
                   {"eps": 1e-3}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_folded_batch_norm_matches_numpy(case, rng):
    shape, axis, make, opts = CASES[case]
    params = [p.astype(np.float32) for p in make(rng)]
    mod = _module(shape, axis, params, **opts)
    folded = fold_batch_norm(mod)
    ops = [op for op, _ in main_calls(folded)]
    assert "relax.nn.batch_norm" not in ops and ops.count("relax.multiply") == 1
    x = rng.standard_normal(shape).astype(np.float32) * 4
    gamma, beta = params[0], params[1]
    if not opts.get("scale", True):
        gamma = np.ones_like(gamma)
    if not opts.get("center", True):
        beta = np.zeros_like(beta)
    want = np.clip(_reference(x, gamma, beta, params[2], params[3], opts.get("eps", 1e-5),
                              axis % len(shape)), -6, 6)
    assert rel_err(_run(folded, x), want) < 1e-6
    # TVM's own lowering of the unfolded BatchNorm agrees too (the same function)
    assert rel_err(_run(mod, x), want) < 1e-5


def test_the_kernel_left_divides_nothing(rng):
    """After the fold, the BatchNorm's fused kernel multiplies and adds: no division."""
    params = [p.astype(np.float32) for p in _params(5, rng)]
    mod = compiler.prepare(compiler.Lowered(fold_batch_norm(_module((1, 5, 4, 3), 1, params)),
                                            []), HOST, schedule=False)
    kernels = {n: mod[n].script() for n in compiler.call_sites(mod)}
    assert len(kernels) == 1 and next(iter(kernels)).startswith("fused_multiply_add")
    unfolded = compiler.prepare(compiler.Lowered(_module((1, 5, 4, 3), 1, params), []), HOST,
                                schedule=False)
    assert any(" / " in unfolded[n].script() for n in compiler.call_sites(unfolded))
    assert not any(" / " in text for text in kernels.values())


def test_a_batch_norm_of_run_time_operands_is_left_as_it_is(rng):
    mod = _module((1, 5, 4, 3), 1, [p.astype(np.float32) for p in _params(5, rng)],
                  const=False)
    assert "relax.nn.batch_norm" in [op for op, _ in main_calls(fold_batch_norm(mod))]


def test_fp32_build_of_a_model_folds_every_batch_norm_and_matches_torch(rng):
    """A conv -> BatchNorm -> relu net's FP32 baseline: no BatchNorm left, same numbers as
    torch (the int8 build still takes its BatchNorm into the conv: test_epilogue)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                              torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1),
                              torch.nn.BatchNorm2d(4)).eval()
    with torch.no_grad():
        for bn in (net[1], net[4]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.2, 2.0)
            bn.weight.uniform_(-1.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
    x = torch.randn(1, 3, 9, 9)
    imported = frontend.from_torch(net, (x,))
    lowered = compiler.lower(imported, codebooks=False)
    assert "relax.nn.batch_norm" not in [op for op, _ in main_calls(lowered.mod)]
    got = compiler.run_local(compiler.build(lowered, HOST), [x.numpy()])[0]
    with torch.no_grad():
        assert rel_err(got, net(x).numpy()) < 1e-5
