"""Shared helpers. Relative error everywhere is max|got - want| / max|want|."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tvm

from dgms_tvm.device.sysroot import cache_dir
from dgms_tvm.format import CodebookWeight
from dgms_tvm.kernels.common import standalone
from dgms_tvm.pipeline import rel_err  # noqa: F401  (the tests' comparisons)
from dgms_tvm.targets import get_profile, host_has

#: Tests of the x86 VNNI int8 micro-kernel: run where this host has its instructions.
NEEDS_VNNI = pytest.mark.skipif(
    not host_has("vnni"),
    reason="this host lacks AVX-512 VNNI (the x86 int8 micro-kernels' instruction)")

#: Tests of what an x86 build does on a host without AVX-512 VNNI (its int8 depthwise convs
#: stay FP32): run where the host lacks it.
WITHOUT_VNNI = pytest.mark.skipif(
    host_has("vnni"), reason="this host has AVX-512 VNNI (its x86 builds run int8 depthwise)")


#: Tests that start emulated Cortex-A devices (qemu-user and the sysroot from setup).
NEEDS_QEMU = pytest.mark.skipif(
    shutil.which("qemu-aarch64") is None
    or not (cache_dir() / "sysroot" / "bin" / "guest-python").exists(),
    reason="no qemu-aarch64 or no device sysroot (scripts/setup.sh builds them)")


def random_codebook_weight(rng, shape, bits, scaled=False, sparsity=0.3) -> CodebookWeight:
    """A codebook weight with a zero share of about ``sparsity`` (DGMS's pinned zero)."""
    k = 1 << bits
    idx = rng.integers(1, k, size=shape) if k > 1 else np.zeros(shape, np.int64)
    idx[rng.random(shape) < sparsity] = 0
    cb = np.concatenate([[0.0], rng.normal(size=k - 1)]).astype(np.float32)
    scale = (rng.random(shape[0]) + 0.5) * rng.choice([-1, 1], shape[0]) if scaled else None
    return CodebookWeight.from_indices(idx, cb, bits, scale=scale)


def run_kernel(func, args) -> np.ndarray:
    """Build a kernel PrimFunc for this host, run it on ``args`` (output last), return output."""
    lib = tvm.compile(standalone(func), target=get_profile("x86").tvm_target())
    targs = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args]
    lib["main"](*targs)
    return targs[-1].numpy()




def check_int8_out(func, args, want, act: str, name: str = "") -> None:
    """A conv writing the next conv's int8 input (its output buffer last in ``args``, filled
    with 77) against ``want``: at most 1 apart (a float32 tie rounded the other way) and
    rarely, clamped at both ends, and every byte written whatever the buffer held."""
    got = run_kernel(func, args)
    diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
    assert diff.max() <= 1 and (diff > 0).mean() < 2e-3, name
    assert (want == 127).any() and (want == (0 if act else -127)).any()
    args[-1] = np.full(args[-1].shape, -100, np.int8)
    np.testing.assert_array_equal(run_kernel(func, args), got)
