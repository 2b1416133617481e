"""Batch-1 codebook dense (GEMV) kernels: spec, compute, NumPy oracle, packing.

``Y[m, n] = sum_k X[m, k] * W[n, k]`` with ``W[n, k] = scale[n] * codebook[idx(n, k)]`` and
at most 16 codebook entries (1 to 4 bits). At batch 1 nothing is shared between output
features, so the cost is the weight stream plus the work to turn each index into a weight;
these kernels make that work a few vector instructions per 32 or 128 weights. Four
arithmetics, a module each:

``exact`` (:mod:`.exact`), ``int8`` (:mod:`.int8`, and its ``avx2`` form), ``lut``
(:mod:`.lut`, and its ``tbl`` / ``gather`` forms) and ``fp32`` (:mod:`.fp32`); each module
says how its arithmetic works and what it needs.

Weights are re-packed at compile time (:func:`pack`) so that one byte holds the indices of
two weights a fixed distance apart, and a nibble split is a shift: in each chunk of ``C``
weights (``C`` = 32 for exact, 128 for int8) byte ``j`` holds weight ``j`` in its low nibble
and weight ``C/2 + j`` in its high nibble. ``K`` is padded to a whole chunk with index 0,
whose codebook entry is exactly zero.

Each kernel is written already scheduled (TVMScript loops, no blocks): output features in
parallel, ``rows`` features per register tile sharing each ``X`` load.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm

from ..int8.operands.quantize import quantize_input
from ..int8.operands.weights import quantize_codebook
from ..protocol import KernelFamily
from . import exact, fp32, int8, lut
from .packing import (
    Int8Weights,
    codebook16,
    int8_weights,
    lut_codebooks,
    lut_pack,
    lut_scale,
    operands,
    pack,
)
from .spec import (
    ARITHS,
    CHUNK,
    FAMILY,
    FORMS,
    LUT_LANES,
    ROWS,
    GemvSpec,
    lut_group,
    rows_for,
    supports,
)
from .spec import finish as _finish


def compute(spec: GemvSpec) -> tvm.tirx.PrimFunc:
    """The PrimFunc, already scheduled. Operands by arithmetic:

    - exact: ``(X f32[M, K], P u8[N, Kp/2], CB f32[16], S f32[N]) -> Y f32[M, N]`` (``S``:
      the per-feature scale, ones without one)
    - int8: ``(X, P, TB i8[64], CORR i32[N], D f32[N]) -> Y``; form avx2: ``(X, P,
      TB i8[32], D) -> Y``
    - fp32: ``(X, W f32[N, K]) -> Y``
    - lut: ``(X, P, EX f32[g, entries], S f32[rows * tiles]) -> Y`` (:func:`lut_pack`,
      :func:`lut_codebooks`, :func:`lut_scale`)
    """
    if spec.form == "avx2":
        return _finish(int8.compute_avx2(spec), spec)
    return _finish({"exact": exact, "int8": int8, "fp32": fp32,
                    "lut": lut}[spec.arith].compute(spec), spec)

def reference(spec: GemvSpec, x, indices, codebook, scale=None) -> np.ndarray:
    """NumPy oracle. exact / lut / fp32: ``x @ W.T`` in float64 (``indices`` is the float ``W`` for
    fp32). int8: the same quantization as the kernel, exact integer sums."""
    x = np.asarray(x, np.float32)
    if spec.arith == "fp32":
        return (x.astype(np.float64) @ np.asarray(indices, np.float64).T).astype(np.float32)
    idx = np.asarray(indices).reshape(spec.n, spec.k)
    if spec.arith in ("exact", "lut"):
        w = np.asarray(codebook, np.float64)[idx]
        if scale is not None:
            w = w * np.asarray(scale, np.float64)[:, None]
        return (x.astype(np.float64) @ w.T).astype(np.float32)
    q, d = quantize_codebook(codebook, scale, spec.n, indices=idx)
    xq, sx = quantize_input(x)
    acc = xq.astype(np.int64) @ q[idx].astype(np.int64).T
    return acc.astype(np.float32) * (sx * d)[None, :]

def schedule(func: tvm.tirx.PrimFunc, knobs: dict) -> tvm.tirx.PrimFunc:
    """The kernel as written (it is written scheduled), except the lut GEMV's ``tbl`` form
    for a target whose schedule file does not say ``"lookup": "tbl"``: there it is rebuilt
    in its one-load-per-lookup form, the same sums in the same order (so a module lowered for
    aarch64 builds for this host too, as the tests' host twins of ARM builds do)."""
    spec = GemvSpec.from_func(func)
    if spec.form == "tbl" and knobs.get("lookup") != "tbl":
        return compute(dataclasses.replace(spec, form="gather"))
    return func



#: Written already scheduled (no blocks for MetaSchedule); no knobs: ``lookup`` (``tbl`` on
#: aarch64) follows from the core, the tile (``rows``) is chosen at lowering.
KERNEL = KernelFamily(FAMILY, GemvSpec, compute, schedule, reference, supports)

__all__ = ["ARITHS", "CHUNK", "FAMILY", "FORMS", "KERNEL", "LUT_LANES", "ROWS", "GemvSpec",
           "Int8Weights", "codebook16", "compute", "int8_weights", "lut_codebooks",
           "lut_group", "lut_pack", "lut_scale", "operands", "pack", "reference", "rows_for",
           "schedule", "supports"]
