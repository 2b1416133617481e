"""The exact GEMV: FP32 arithmetic on the exact codebook values.

FP32 arithmetic on the exact codebook values (results match the FP32 layer up to
summation order). The 16-entry codebook lives in one 512-bit register and
``vpermps`` (``llvm.x86.avx512.permvar.sf.512``) turns 16 indices into 16 weights; one
FMA per 16 weights. Needs ``avx512f``.
"""

from __future__ import annotations

from tvm.script import tirx as T

from .spec import GemvSpec


def compute(spec: GemvSpec):
    M, N, K, R = spec.m, spec.n, spec.k, spec.rows
    C = K // 32
    perm = "llvm.x86.avx512.permvar.sf.512"

    @T.prim_func(private=True)
    def func(X: T.Buffer((M, K), "float32"), P: T.Buffer((N // R, C, R * 16), "uint8"),
             CB: T.Buffer((16,), "float32"), S: T.Buffer((N,), "float32"),
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
                            + X[m, T.Ramp(c * 32, 1, 16)] * T.call_llvm_pure_intrin(
                                "float32x16", perm, CB[T.Ramp(0, 1, 16)],
                                T.Cast("int32x16", P[nb, c, T.Ramp(r * 16, 1, 16)]))
                            + X[m, T.Ramp(c * 32 + 16, 1, 16)] * T.call_llvm_pure_intrin(
                                "float32x16", perm, CB[T.Ramp(0, 1, 16)],
                                T.shift_right(T.Cast("int32x16", P[nb, c, T.Ramp(r * 16, 1, 16)]),
                                              T.Broadcast(4, 16))))
                for r in T.unroll(R):
                    Y[m, nb * R + r] = T.float32(0)
                    for j in range(16):
                        Y[m, nb * R + r] = Y[m, nb * R + r] + acc[r * 16 + j]
                    Y[m, nb * R + r] = Y[m, nb * R + r] * S[nb * R + r]
    return func
