"""The lut GEMV: activation lookup tables, FP32 arithmetic.

Activation lookup tables (T-MAC's idea over a non-uniform codebook), FP32 arithmetic:
the ``g`` weights of a group (``g`` = 4 at 1 bit, 2 at 2 bits, 1 at 3 and 4) share one
index into a per-call table of the ``2^(g*bits)`` (at most 16) sums
``sum_i X[g*q + i] * codebook[e_i]``, made once per call and shared by every output
feature; a lookup then stands for ``g`` multiply-adds. The lanes of a vector are 8
output features (not 8 weights of one, as above), so the 8 lookups of a group read one
table: two ``vpermps`` (``llvm.x86.avx2.permps``: 8 entries each) and a select by the
index's bit 3 (one ``vpermps`` for tables of 8), then one add. Needs ``avx2`` only
(hosts without AVX-512). Results match the FP32 layer up to summation order (a table
entry is a sum of ``g`` products). ``form="gather"`` is the same kernel in plain
code (one scalar load per lookup) for any target: the oracle's check on aarch64.
"""

from __future__ import annotations

from tvm.script import tirx as T

from .spec import LUT_LANES, GemvSpec


def compute(spec: GemvSpec):
    M, N, K, R = spec.m, spec.n, spec.k, spec.rows
    G, EL, V = spec.group, spec.entries, LUT_LANES
    NT, Q, H = spec.packed_shape
    last = N - (NT - 1) * R  # rows of the last tile
    perm = "llvm.x86.avx2.permps"
    gather = spec.form == "gather"
    tbl = spec.form == "tbl"

    def zip_(n, hi):
        """Lanes of ``zip1`` (``hi`` 0) / ``zip2`` (1) of two vectors of ``2 n`` lanes."""
        return [v for j in range(n * hi, n * hi + n) for v in (j, 2 * n + j)]

    def xval(X, m, kk):
        if K % G == 0:
            return X[m, kk]
        return T.if_then_else(kk < K, X[m, T.min(kk, K - 1)], T.float32(0))

    def row_of(X, EX, m, q):
        acc = None
        for i in range(G):
            t = T.Broadcast(xval(X, m, q * G + i), EL) * EX[i, T.Ramp(0, 1, EL)]
            acc = t if acc is None else acc + t
        return acc

    def look(tb, q, i):
        """The entries ``i`` (8 lanes) of group ``q``'s table row."""
        lo = T.call_llvm_pure_intrin("float32x8", perm, tb[T.Ramp(q * EL, 1, V)], i)
        if EL == 8:
            return lo
        hi = T.call_llvm_pure_intrin("float32x8", perm, tb[T.Ramp(q * EL + 8, 1, V)], i)
        return T.Select(i > T.Broadcast(7, V), hi, lo)

    def nibbles(P, nb, q, h):
        v = T.Cast("int32x8", P[nb, q, T.Ramp(h * V, 1, V)])
        return (T.bitwise_and(v, T.Broadcast(15, V)), T.shift_right(v, T.Broadcast(4, V)))

    def plane(tb, q, b: int):
        """Byte plane ``b`` of table row ``q`` (16 floats): byte ``b`` of every entry, a
        16-byte ``tbl`` table."""
        return T.Shuffle([T.reinterpret("uint8x64", tb[T.Ramp(q * 16, 1, 16)])],
                         [4 * e + b for e in range(16)])

    def tbl_look(tp, q, i):
        """16 entries ``i`` of row ``q``: 4 ``tbl`` (one per byte plane), then the bytes
        interleaved back into 16 floats (``zip``)."""
        p = [T.call_llvm_pure_intrin("uint8x16", "llvm.aarch64.neon.tbl1",
                                     tp[T.Ramp((q * 4 + b) * 16, 1, 16)], i) for b in range(4)]
        # zip1 / zip2 of bytes (planes 0, 1 and 2, 3), then of 16-bit halves: 8 zips
        h = [T.reinterpret("uint16x8", T.Shuffle([p[a], p[a + 1]], zip_(8, half)))
             for a in (0, 2) for half in (0, 1)]
        f = [T.Shuffle([h[half], h[2 + half]], zip_(4, quarter))
             for half in (0, 1) for quarter in (0, 1)]
        return T.reinterpret("float32x16", T.Shuffle(f, list(range(32))))

    @T.macro
    def lookups(P, tb, acc, nb, q):
        if tbl:  # rows j and 16 + j share byte j: 16 lookups per tbl
            acc[T.Ramp(0, 1, 16)] = acc[T.Ramp(0, 1, 16)] + tbl_look(tb, q, T.bitwise_and(
                P[nb, q, T.Ramp(0, 1, 16)], T.Broadcast(T.uint8(15), 16)))
            acc[T.Ramp(16, 1, 16)] = acc[T.Ramp(16, 1, 16)] + tbl_look(tb, q, T.shift_right(
                P[nb, q, T.Ramp(0, 1, 16)], T.Broadcast(T.uint8(4), 16)))
        elif gather:  # one scalar load per lookup
            for j in T.unroll(H):
                acc[j] = acc[j] + tb[q * EL + T.Cast("int32", T.bitwise_and(
                    P[nb, q, j], T.uint8(15)))]
                acc[H + j] = acc[H + j] + tb[q * EL + T.Cast("int32", T.shift_right(
                    P[nb, q, j], T.uint8(4)))]
        else:
            for h in T.unroll(H // V):
                lo, hi = nibbles(P, nb, q, h)
                acc[T.Ramp(h * V, 1, V)] = acc[T.Ramp(h * V, 1, V)] + look(tb, q, lo)
                acc[T.Ramp(H + h * V, 1, V)] = acc[T.Ramp(H + h * V, 1, V)] + look(tb, q, hi)

    @T.macro
    def make_planes(tb, tp, nq):
        if tbl:
            for q in range(nq):
                tp[T.Ramp(q * 64, 1, 16)] = plane(tb, q, 0)
                tp[T.Ramp(q * 64 + 16, 1, 16)] = plane(tb, q, 1)
                tp[T.Ramp(q * 64 + 32, 1, 16)] = plane(tb, q, 2)
                tp[T.Ramp(q * 64 + 48, 1, 16)] = plane(tb, q, 3)

    @T.macro
    def store(Y, S, acc, m, nb, rows):
        for a in T.unroll(rows // V):
            Y[m, T.Ramp(nb * R + a * V, 1, V)] = acc[T.Ramp(a * V, 1, V)] * S[
                T.Ramp(nb * R + a * V, 1, V)]
        for j in T.unroll(rows % V):
            Y[m, nb * R + rows // V * V + j] = acc[rows // V * V + j] * S[
                nb * R + rows // V * V + j]

    @T.prim_func(private=True)
    def func(X: T.Buffer((M, K), "float32"), P: T.Buffer((NT, Q, H), "uint8"),
             EX: T.Buffer((G, EL), "float32"), S: T.Buffer((NT * R,), "float32"),
             Y: T.Buffer((M, N), "float32")):
        tb = T.alloc_buffer((Q * EL,), "float32")
        tp = T.alloc_buffer((Q * 64 if tbl else 1,), "uint8")
        for m in range(M):
            for q in range(Q):
                tb[T.Ramp(q * EL, 1, EL)] = row_of(X, EX, m, q)
            make_planes(tb, tp, Q)
            for nb in T.parallel(NT):
                acc = T.alloc_buffer((R,), "float32", scope="local")
                for a in T.unroll(R // V):
                    acc[T.Ramp(a * V, 1, V)] = T.Broadcast(T.float32(0), V)
                for q in range(Q):
                    lookups(P, tp if tbl else tb, acc, nb, q)
                if last == R:
                    store(Y, S, acc, m, nb, R)
                elif nb < NT - 1:
                    store(Y, S, acc, m, nb, R)
                else:
                    store(Y, S, acc, m, nb, last)
    return func
