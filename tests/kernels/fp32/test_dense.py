"""Codebook dense against its NumPy oracle, scheduled and unscheduled."""

import numpy as np
import pytest
import tvm

from dgms_tvm.kernels.common import FP32_WEIGHT, standalone
from dgms_tvm.kernels.fp32 import dense
from dgms_tvm.schedules import load_knobs
from dgms_tvm.targets import get_profile
from tests.helpers import random_codebook_weight, rel_err, run_kernel

D = dense.DenseSpec
#: ... and prime feature counts over the tile (83, 37: tiles of 1, the vector loop gone)
SHAPES = [(1, 10, 37), (1, 64, 64), (3, 48, 100), (8, 33, 17), (1, 1000, 512), (169, 83, 32),
          (5, 37, 41)]


def _check(spec, rng, schedule):
    cw = random_codebook_weight(rng, spec.weight_shape, spec.bits, scaled=spec.scaled)
    x = rng.normal(size=(spec.m, spec.k)).astype(np.float32)
    func = dense.compute(spec)
    if schedule:
        func = dense.schedule(func, load_knobs("x86")["cb_dense"])
    args = [x, cw.packed, cw.codebook] + ([cw.scale] if spec.scaled else [])
    got = run_kernel(func, [*args, np.zeros(spec.out_shape, np.float32)])
    assert rel_err(got, dense.reference(spec, x, cw.dense())) < 1e-5, spec.name


@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_dense_matches_oracle(m, n, k, bits, rng):
    _check(D(m, n, k, bits, scaled=bits == 3), rng, schedule=True)


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_fp32_weight_variant_matches_oracle(m, n, k, rng):
    spec = D(m, n, k, FP32_WEIGHT)
    w = rng.normal(size=(n, k)).astype(np.float32)
    x = rng.normal(size=(m, k)).astype(np.float32)
    func = dense.schedule(dense.compute(spec), load_knobs("x86")["cb_dense"])
    got = run_kernel(func, [x, w, np.zeros(spec.out_shape, np.float32)])
    assert rel_err(got, dense.reference(spec, x, w)) < 1e-5


@pytest.mark.parametrize("m,n,k", SHAPES[:3])
def test_unscheduled_dense_matches_oracle(m, n, k, rng):
    _check(D(m, n, k, 4), rng, schedule=False)


def test_scheduled_dense_builds_for_aarch64():
    func = dense.schedule(dense.compute(D(1, 64, 128, 4)), load_knobs("cortex-a72")["cb_dense"])
    lib = tvm.compile(standalone(func), target=get_profile("cortex-a72").tvm_target())
    assert "fmla" in lib.mod.inspect_source("s")
