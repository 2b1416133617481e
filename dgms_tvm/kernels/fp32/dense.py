"""Codebook dense: compute, NumPy oracle and hand-written schedule.

``Y[m, n] = sum_k X[m, k] * scale[n] * codebook[idx(n, k)]``: a ``matmul`` with a constant
``[K, N]`` operand, or a Linear layer's ``W[N, K]`` (the pass flattens leading batch axes of
``X`` into ``M``). The weight arrives as packed indices (one row per output feature ``n``)
plus codebook, in the layout of :mod:`dgms_tvm.format`. With ``bits=FP32_WEIGHT`` the
weight operand is the float32 ``W[N, K]`` itself (the FP32 baseline, same compute and schedule).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm import te

from ...format import row_bytes
from ..common import (
    FP32_WEIGHT,
    KERNEL_ATTR,
    OPAQUE,
    SPEC_ATTR,
    Tiler,
    best_tile,
    decode_index,
    i64,
)
from ..protocol import KernelFamily, Spec

FAMILY = "cb_dense"


@dataclasses.dataclass(frozen=True)
class DenseSpec(Spec):
    """Every parameter a codebook dense kernel is specialised on."""

    m: int
    n: int
    k: int
    bits: int = 4
    scaled: bool = False

    @property
    def weight_shape(self) -> tuple[int, int]:
        return (self.n, self.k)

    @property
    def out_shape(self) -> tuple[int, int]:
        return (self.m, self.n)

    @property
    def name(self) -> str:
        """Kernel name carrying every specialised parameter."""
        if self.bits == FP32_WEIGHT:
            return f"fp32_dense_m{self.m}_n{self.n}_k{self.k}"
        return (f"{FAMILY}_m{self.m}_n{self.n}_k{self.k}_b{self.bits}"
                f"{'_scaled' if self.scaled else ''}")


def compute(spec: DenseSpec) -> tvm.tirx.PrimFunc:
    """The unscheduled PrimFunc ``(X, packed, codebook[, scale]) -> Y`` (``(X, W) -> Y`` for
    ``bits=FP32_WEIGHT``).

    Two blocks: ``decode`` (the weight laid out ``[k, n]``, output features innermost so that
    they vectorise) and ``dense``.
    """
    s = spec
    x = te.placeholder((i64(s.m), i64(s.k)), "float32", "X")
    fp32 = s.bits == FP32_WEIGHT
    if fp32:
        p = te.placeholder((i64(s.n), i64(s.k)), "float32", "W")
    else:
        p = te.placeholder((i64(s.n), i64(row_bytes(s.k, s.bits))), "uint8", "P")
        cb = te.placeholder((i64(1 << s.bits),), "float32", "CB")
    sc = te.placeholder((i64(s.n),), "float32", "S") if s.scaled else None

    def weight(k, n):
        if fp32:
            return p[n, k]
        w = cb[decode_index(p, n, k, s.bits)]
        return w * sc[n] if sc is not None else w

    wt = te.compute((i64(s.k), i64(s.n)), weight, name="decode")
    rk = te.reduce_axis((i64(0), i64(s.k)), "rk")
    y = te.compute((i64(s.m), i64(s.n)),
                   lambda m, n: te.sum(x[m, rk] * wt[rk, n], axis=rk), name="dense")
    args = [x, p] + ([] if fp32 else [cb]) + ([sc] if sc is not None else []) + [y]
    return te.create_prim_func(args).with_attrs({
        KERNEL_ATTR: FAMILY,
        SPEC_ATTR: s.to_json(),
        "op_pattern": OPAQUE,
        "tirx.noalias": True,
    }).without_attr("global_symbol")  # private: the Relax module names it


def reference(spec: DenseSpec, x, weight) -> np.ndarray:
    """NumPy oracle: ``x @ weight.T`` in float64, ``weight`` of shape ``[N, K]``."""
    return (x.astype(np.float64) @ weight.astype(np.float64).T).astype(np.float32)


def schedule(func: tvm.tirx.PrimFunc, knobs: dict) -> tvm.tirx.PrimFunc:
    """Hand-written CPU schedule; ``knobs`` come from ``schedules/<target>.json``.

    Knobs: ``n_tile`` (output features per vector tile), ``m_tile`` (rows per register
    tile), ``k_unroll``.
    """
    sch = tvm.s_tir.Schedule(func)
    apply(sch, knobs)
    return sch.mod["main"]


def apply(sch, knobs: dict, sample: bool = False) -> None:
    """The schedule's steps on ``sch`` (``sample``: as a tuning design space, see Tiler)."""
    spec = DenseSpec.from_func(sch.mod["main"])
    tile = Tiler(sch, sample)
    dense, dec = sch.get_sblock("dense"), sch.get_sblock("decode")
    m, n, k = sch.get_loops(dense)
    # Step 1. Tile output features into vectors and rows into a register tile:
    # acc[m_tile, n_tile] += X[m, k] (broadcast) * W[k, n_tile] (one vector load).
    nt = best_tile(spec.n, knobs["n_tile"])
    mt = best_tile(spec.m, knobs["m_tile"])
    kt = best_tile(spec.k, knobs["k_unroll"])
    no, ni = tile.split(n, spec.n, nt)
    mo, mi = tile.split(m, spec.m, mt, 8)
    ko, ki = tile.split(k, spec.k, kt, 16)
    sch.reorder(no, mo, ko, ki, mi, ni)
    acc = sch.cache_write(dense, 0, "local")
    sch.reverse_compute_at(acc, mo)
    # Step 2. Decode the [K, n_tile] weight panel once per feature tile; every row reuses it.
    sch.compute_at(dec, no)
    sch.parallel(no)
    sch.unroll(ki)
    sch.unroll(mi)
    if nt > 1:  # (a 1-feature tile's loops are gone: the innermost is another)
        tile.vectorize(lambda: ni, lambda: sch.get_loops(dec)[-1],
                       lambda: sch.get_loops(acc)[-1])
    # Step 3. Accumulator initialisation split off last.
    tile.finish(dense, ko)


#: The generic dense kernel: any dense layer, tuned by MetaSchedule from its hand schedule.
KERNEL = KernelFamily(FAMILY, DenseSpec, compute, schedule, reference, apply=apply,
                      searchable=True, knobs=True)
