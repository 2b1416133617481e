"""The int8 GEMV: the int8 strategy's arithmetic at batch 1 (x86).

The int8 strategy (see :mod:`dgms_tvm.kernels.int8.operands.quantize`): the codebook as int8 entries
with one scale, ``X`` quantized per call symmetrically per tensor. The int8 codebook sits in
a 16-byte table (repeated in each 128-bit lane) and ``vpshufb`` turns 64 indices into 64
int8 weights; ``vpdpbusd`` (VNNI) does 64 multiply-adds. ``vpdpbusd`` multiplies unsigned by
signed bytes, so the kernel stores ``Xq + 128`` and subtracts ``128 * sum_k Wq[n, k]`` (a
per-feature constant made at pack time). Needs ``avx512bw`` and ``avx512vnni``.

Form ``avx2``: the int8 arithmetic on x86 without VNNI: 32 indices to int8 weights per
``vpshufb``, then ``vpmaddubsw`` (unsigned by signed bytes, pairs summed into int16) on ``|Wq|`` and
``Xq`` with ``Wq``'s sign (``vpsignb``): a pair is at most 2 * 127 * 127, so it cannot
saturate; ``vpmaddwd`` by ones into int32. 32 multiply-adds in 5 instructions. ``Xq`` is
signed (no correction term). Needs ``avx2``.
"""

from __future__ import annotations

from tvm.script import tirx as T

from ..int8.operands.quantize import TINY
from .spec import GemvSpec


def _quantize_x(M: int, K: int, KP: int, signed: bool):
    """The int8 GEMVs' prologue: ``X`` quantized per tensor (the int8 strategy's ``s_x =
    max|X| / 127``) into ``xq [M, KP]`` (zero padded), signed (AVX2) or stored + 128 as
    uint8 (VNNI, which multiplies unsigned by signed bytes); ``sx[0]`` ends as ``s_x``."""
    tiny = float(TINY)
    pad = T.int8(0) if signed else T.uint8(128)

    def level(v):
        c = T.max(T.min(T.round(v), T.float32(127)), T.float32(-127))
        return T.Cast("int8", c) if signed else T.Cast("uint8", T.Cast("int32", c) + 128)

    @T.macro
    def quantize(X, xq, sx):
        sx[0] = T.float32(tiny)
        for m, k in T.grid(M, K):
            sx[0] = T.max(sx[0], T.abs(X[m, k]))
        for m, k in T.grid(M, KP):
            xq[m, k] = pad
        for m, k in T.grid(M, K):
            xq[m, k] = level(X[m, k] * (T.float32(127) / sx[0]))
        sx[0] = sx[0] / T.float32(127)

    return quantize

def compute_avx2(spec: GemvSpec):
    M, N, K, R, KP = spec.m, spec.n, spec.k, spec.rows, spec.kp
    C = KP // 64
    shuf, sign = "llvm.x86.avx2.pshuf.b", "llvm.x86.avx2.psign.b"
    mub, mwd = "llvm.x86.avx2.pmadd.ub.sw", "llvm.x86.avx2.pmadd.wd"
    quantize = _quantize_x(M, K, KP, signed=True)

    def half(TB, xq, p, m, c, h):
        """The 32 products of one nibble half of a chunk, summed by 4 into 8 int32 lanes."""
        idx = T.bitwise_and(p, T.Broadcast(T.uint8(15), 32)) if h == 0 else T.shift_right(
            p, T.Broadcast(T.uint8(4), 32))
        w = T.call_llvm_pure_intrin("int8x32", shuf, TB[T.Ramp(0, 1, 32)],
                                    T.reinterpret("int8x32", idx))
        x = T.call_llvm_pure_intrin("int8x32", sign, xq[m, T.Ramp(c * 64 + h * 32, 1, 32)], w)
        p16 = T.call_llvm_pure_intrin("int16x16", mub, T.reinterpret("uint8x32", T.abs(w)), x)
        return T.call_llvm_pure_intrin("int32x8", mwd, p16, T.Broadcast(T.int16(1), 16))

    @T.prim_func(private=True)
    def func(X: T.Buffer((M, K), "float32"), P: T.Buffer((N // R, C, R * 32), "uint8"),
             TB: T.Buffer((32,), "int8"), D: T.Buffer((N,), "float32"),
             Y: T.Buffer((M, N), "float32")):
        xq = T.alloc_buffer((M, KP), "int8")
        sx = T.alloc_buffer((1,), "float32")
        quantize(X, xq, sx)
        for nb in T.parallel(N // R):
            acc = T.alloc_buffer((R * 8,), "int32", scope="local")
            tot = T.alloc_buffer((1,), "int32", scope="local")
            for m in range(M):
                for r in T.unroll(R):
                    acc[T.Ramp(r * 8, 1, 8)] = T.Broadcast(T.int32(0), 8)
                for c in range(C):
                    for r in T.unroll(R):
                        acc[T.Ramp(r * 8, 1, 8)] = (
                            acc[T.Ramp(r * 8, 1, 8)]
                            + half(TB, xq, P[nb, c, T.Ramp(r * 32, 1, 32)], m, c, 0)
                            + half(TB, xq, P[nb, c, T.Ramp(r * 32, 1, 32)], m, c, 1))
                for r in T.unroll(R):
                    tot[0] = T.int32(0)
                    for j in range(8):
                        tot[0] = tot[0] + acc[r * 8 + j]
                    Y[m, nb * R + r] = T.Cast("float32", tot[0]) * (sx[0] * D[nb * R + r])
    return func

def compute(spec: GemvSpec):
    M, N, K, R, KP = spec.m, spec.n, spec.k, spec.rows, spec.kp
    C = KP // 128
    dot, shuf = "llvm.x86.avx512.vpdpbusd.512", "llvm.x86.avx512.pshuf.b.512"
    quantize = _quantize_x(M, K, KP, signed=False)

    @T.prim_func(private=True)
    def func(X: T.Buffer((M, K), "float32"), P: T.Buffer((N // R, C, R * 64), "uint8"),
             TB: T.Buffer((64,), "int8"), CORR: T.Buffer((N,), "int32"),
             D: T.Buffer((N,), "float32"), Y: T.Buffer((M, N), "float32")):
        xq = T.alloc_buffer((M, KP), "uint8")
        sx = T.alloc_buffer((1,), "float32")
        quantize(X, xq, sx)
        for nb in T.parallel(N // R):
            acc = T.alloc_buffer((R * 16,), "int32", scope="local")
            tot = T.alloc_buffer((1,), "int32", scope="local")
            for m in range(M):
                for r in T.unroll(R):
                    acc[T.Ramp(r * 16, 1, 16)] = T.Broadcast(T.int32(0), 16)
                for c in range(C):
                    for r in T.unroll(R):
                        acc[T.Ramp(r * 16, 1, 16)] = T.call_llvm_pure_intrin(
                            "int32x16", dot,
                            T.call_llvm_pure_intrin(
                                "int32x16", dot, acc[T.Ramp(r * 16, 1, 16)],
                                xq[m, T.Ramp(c * 128, 1, 64)],
                                T.call_llvm_pure_intrin(
                                    "int8x64", shuf, TB[T.Ramp(0, 1, 64)],
                                    T.reinterpret("int8x64", T.bitwise_and(
                                        P[nb, c, T.Ramp(r * 64, 1, 64)],
                                        T.Broadcast(T.uint8(15), 64))))),
                            xq[m, T.Ramp(c * 128 + 64, 1, 64)],
                            T.call_llvm_pure_intrin(
                                "int8x64", shuf, TB[T.Ramp(0, 1, 64)],
                                T.reinterpret("int8x64", T.shift_right(
                                    P[nb, c, T.Ramp(r * 64, 1, 64)],
                                    T.Broadcast(T.uint8(4), 64)))))
                for r in T.unroll(R):
                    tot[0] = -CORR[nb * R + r]
                    for j in range(16):
                        tot[0] = tot[0] + acc[r * 16 + j]
                    Y[m, nb * R + r] = T.Cast("float32", tot[0]) * (sx[0] * D[nb * R + r])
    return func
