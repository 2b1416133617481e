"""The property test of the models users bring: random small graphs of modern CNN blocks
(tests/models/random_graphs.py), exported to ONNX as a user would, compile with every
strategy for this host (the exact build equals onnxruntime FP32; the others stay near it)
and are lowered and scheduled for two aarch64 cores: no internal error, and every codebook
layer either on a kernel or with its reason. The cases are fixed seeds (a failure names
its seed: ``random_model(seed)`` rebuilds it); ``DGMS_PROPERTY_CASES=N`` runs N more."""

import os

import numpy as np
import onnxruntime as ort
import pytest

from dgms_tvm import compiler, frontend, strategies
from dgms_tvm.targets import get_profile
from tests.helpers import rel_err
from tests.models.random_graphs import random_model

SEEDS = list(range(8)) + list(range(100, 100 + int(os.environ.get("DGMS_PROPERTY_CASES",
                                                                    "0"))))
#: A bound for the builds that quantize activations or round codebooks (int8: the
#: per-tensor rounding of each layer's input, compounded over a few layers).
LOOSE = 0.1


@pytest.fixture(params=SEEDS, ids=[f"seed{s}" for s in SEEDS])
def case(request, tmp_path):
    model, x, _ = random_model(request.param)
    blob = frontend.onnx_bytes(model, (x,))
    path = tmp_path / "case.onnx"
    path.write_bytes(blob)
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    x = x.numpy()
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return request.param, frontend.load_onnx(path), x, ref


def test_every_strategy_compiles_and_computes_the_model(case):
    seed, imported, x, ref = case
    host = get_profile("x86")
    for strategy in strategies.STRATEGIES:
        lowered = compiler.lower(imported, None, strategy=strategies.resolve(strategy, host),
                                 profile=host)
        for r in lowered.records:
            assert not r.error and (r.kernel or r.fp32_kernel or r.reason), (seed, r)
        got = compiler.run_local(compiler.build(lowered, host), [x])[0]
        assert np.isfinite(got).all(), (seed, strategy)
        exact = not any(r.strategy and r.strategy.startswith("int8")
                        for r in lowered.records)
        assert rel_err(got, ref) < (1e-5 if exact else LOOSE), (seed, strategy)
    for target in ("cortex-a72", "neoverse-n1"):
        profile = get_profile(target)
        for strategy in ("auto", "exact"):
            lowered = compiler.lower(imported, None, strategy=strategies.resolve(
                strategy, profile), profile=profile)
            compiler.prepare(lowered, profile)
            for r in lowered.records:
                assert not r.error and (r.kernel or r.fp32_kernel or r.reason), (seed, r)
