"""The FP32 GEMV: the same loop nest over a float32 weight.

The same loop nest over a float32 ``W[N, K]``: the FP32 baseline these are measured
against (``scripts/bench_gemv.py``), and the batch-1 float32 dense of every target (an
FP32 classifier on aarch64, where it takes fewer instructions than the generic dense
kernel's transposed weight panel: docs/kernels.md).
"""

from __future__ import annotations

from tvm.script import tirx as T

from .spec import GemvSpec


def compute(spec: GemvSpec):
    M, N, K, R = spec.m, spec.n, spec.k, spec.rows
    C = K // 16

    @T.prim_func(private=True)
    def func(X: T.Buffer((M, K), "float32"), W: T.Buffer((N, K), "float32"),
             Y: T.Buffer((M, N), "float32")):
        for nb in T.parallel(N // R):
            acc = T.alloc_buffer((R * 16,), "float32", scope="local")
            for m in range(M):
                for r in T.unroll(R):
                    acc[T.Ramp(r * 16, 1, 16)] = T.Broadcast(T.float32(0), 16)
                for c in range(C):
                    for r in T.unroll(R):
                        acc[T.Ramp(r * 16, 1, 16)] = (
                            acc[T.Ramp(r * 16, 1, 16)]
                            + X[m, T.Ramp(c * 16, 1, 16)] * W[nb * R + r, T.Ramp(c * 16, 1, 16)])
                for r in T.unroll(R):
                    Y[m, nb * R + r] = T.float32(0)
                    for j in range(16):
                        Y[m, nb * R + r] = Y[m, nb * R + r] + acc[r * 16 + j]
    return func
