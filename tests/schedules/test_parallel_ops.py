"""The ops no kernel family owns (a max pool, a mean, an add), as Relax legalized them: their
leading spatial loops run in parallel in hand-scheduled builds, with the same numbers."""

import numpy as np
import tvm
from tvm import te, topi

from dgms_tvm.kernels.common import standalone
from dgms_tvm.schedules import hand
from dgms_tvm.targets import get_profile


def _pool():
    x = te.placeholder((1, 8, 20, 20), "float32", "x")
    y = topi.nn.pool2d(x, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1), "max", layout="NCHW")
    return te.create_prim_func([x, y])


def _run(func, x):
    lib = tvm.compile(standalone(func), target=get_profile("x86").tvm_target())
    out = tvm.runtime.tensor(np.zeros((1, 8, 10, 10), np.float32))
    lib["main"](tvm.runtime.tensor(x), out)
    return out.numpy()


def test_a_max_pool_runs_its_channels_in_parallel(rng):
    func = _pool()
    par = hand.parallel_ops(func)
    text = par.script()
    assert text.count("T.parallel") == 2  # the padding's nest and the pool's
    assert "T.parallel" not in func.script()
    x = rng.normal(size=(1, 8, 20, 20)).astype(np.float32)
    np.testing.assert_array_equal(_run(par, x), _run(func, x))


def test_a_reduction_over_everything_keeps_its_loops():
    x = te.placeholder((64,), "float32", "x")
    k = te.reduce_axis((0, 64), "k")
    y = te.compute((1,), lambda _: te.sum(x[k], axis=k), name="total")
    func = te.create_prim_func([x, y])
    assert "T.parallel" not in hand.parallel_ops(func).script()  # one output: nothing to split
