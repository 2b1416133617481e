"""Batch-1 codebook dense (GEMV) for x86 hosts with AVX-512: compute, NumPy oracle, packing.

``Y[m, n] = sum_k X[m, k] * W[n, k]`` with ``W[n, k] = scale[n] * codebook[idx(n, k)]`` and
at most 16 codebook entries (1 to 4 bits). At batch 1 nothing is shared between output
features, so the cost is the weight stream plus the work to turn each index into a weight;
these kernels make that work a few vector instructions per 32 or 128 weights. Three
arithmetics:

``exact``
    FP32 arithmetic on the exact codebook values (results match the FP32 layer up to
    summation order). The 16-entry codebook lives in one 512-bit register and
    ``vpermps`` (``llvm.x86.avx512.permvar.sf.512``) turns 16 indices into 16 weights; one
    FMA per 16 weights. Needs ``avx512f``.
``int8``
    The int8 strategy (see :mod:`.int8`): the codebook as int8 entries with one scale, ``X``
    quantized per call symmetrically per tensor. The int8 codebook sits in a 16-byte table
    (repeated in each 128-bit lane) and ``vpshufb`` turns 64 indices into 64 int8 weights;
    ``vpdpbusd`` (VNNI) does 64 multiply-adds. ``vpdpbusd`` multiplies unsigned by signed
    bytes, so the kernel stores ``Xq + 128`` and subtracts ``128 * sum_k Wq[n, k]`` (a
    per-feature constant made at pack time). Needs ``avx512bw`` and ``avx512vnni``.
``int8``, ``form="avx2"``
    The int8 arithmetic on x86 without VNNI: 32 indices to int8 weights per ``vpshufb``,
    then ``vpmaddubsw`` (unsigned by signed bytes, pairs summed into int16) on ``|Wq|`` and
    ``Xq`` with ``Wq``'s sign (``vpsignb``): a pair is at most 2 * 127 * 127, so it cannot
    saturate; ``vpmaddwd`` by ones into int32. 32 multiply-adds in 5 instructions. ``Xq`` is
    signed (no correction term). Needs ``avx2``.
``lut``
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
``fp32``
    The same loop nest over a float32 ``W[N, K]``: the FP32 baseline these are measured
    against (``scripts/bench_gemv.py``), and the batch-1 float32 dense of every target (an
    FP32 classifier on aarch64: about 0.6 instructions per multiply-add, where the generic
    dense kernel's transposed weight panel costs 4).

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
import json

import numpy as np
import tvm
from tvm.script import tirx as T

from .common import KERNEL_ATTR, OPAQUE, SPEC_ATTR
from .int8 import TINY, quantize_codebook, quantize_input

FAMILY = "cb_gemv"
ARITHS = ("exact", "int8", "fp32", "lut")
#: Weights per packed chunk, by arithmetic (lut: one group; see :func:`lut_group`).
CHUNK = {"exact": 32, "int8": 128, "fp32": 16, "lut": 1}
#: Profile capabilities (:data:`dgms_tvm.targets.CAPABILITIES`) each arithmetic's
#: instructions need (fp32 is generic vector code: LLVM splits its 16 lanes into the target's
#: registers, 4 NEON or 2 AVX2 ones).
NEEDS = {"exact": ("avx512",), "int8": ("vnni",), "fp32": (), "lut": ("avx2",)}
#: Other forms of an arithmetic (``GemvSpec.form``; "" is the one above), with their needs.
FORMS = {"exact": ("",), "int8": ("", "avx2"), "fp32": ("",), "lut": ("", "tbl", "gather")}
FORM_NEEDS = {"avx2": ("avx2",), "gather": (), "tbl": ("neon",)}
#: Output features per vector of the lut kernel (one AVX2 register of float32).
LUT_LANES = 8


def lut_group(bits: int) -> int:
    """Weights per lookup of the lut arithmetic: as many as keep the table within 16 entries
    (two 8-entry permutes)."""
    return {1: 4, 2: 2}.get(bits, 1)


@dataclasses.dataclass(frozen=True)
class GemvSpec:
    """Every parameter a GEMV kernel is specialised on."""

    m: int
    n: int
    k: int
    bits: int = 4
    arith: str = "exact"
    rows: int = 4
    #: "" (the arithmetic's own instructions: module docstring) or another form of it:
    #: "tbl" (lut, aarch64), "gather" (lut, any target) or "avx2" (int8 on x86 without VNNI).
    form: str = ""

    def __post_init__(self):
        if self.arith not in ARITHS:
            raise ValueError(f"arith {self.arith!r} not in {ARITHS}")
        if self.form not in FORMS[self.arith]:
            raise ValueError(f"{self.arith} GEMV has no form {self.form!r}")

    @property
    def group(self) -> int:
        """Weights per index (lut: :func:`lut_group`; 1 for the others)."""
        return lut_group(self.bits) if self.arith == "lut" else 1

    @property
    def entries(self) -> int:
        """Lut: entries per table row, 8 or 16 (the ``2^(g*bits)`` sums, zero-padded): 8 only
        for the x86 form's 3-bit tables (one ``vpermps``); the tbl form's byte planes are
        16-byte tables, and its one-load twin (see :func:`schedule`) takes its operands."""
        return 8 if (1 << (self.group * self.bits)) <= 8 and not self.form else 16

    @property
    def chunk(self) -> int:
        return 64 if self.form == "avx2" else CHUNK[self.arith]

    @property
    def kp(self) -> int:
        """``K`` padded to whole chunks."""
        return -(-self.k // self.chunk) * self.chunk

    @property
    def packed_shape(self) -> tuple[int, int, int]:
        """``[N/rows, Kp/chunk, rows * chunk/2]``: one register tile's rows interleaved chunk
        by chunk, so that each thread reads one sequential stream. Lut: ``[ceil(N/rows),
        ceil(K/g), rows/2]``, byte ``j`` of a group holding the index of row ``j`` in its
        low nibble and of row ``rows/2 + j`` in its high one."""
        if self.arith == "lut":
            return (-(-self.n // self.rows), -(-self.k // self.group), self.rows // 2)
        return (self.n // self.rows, self.kp // self.chunk, self.rows * self.chunk // 2)

    @property
    def name(self) -> str:
        if self.arith == "fp32":
            return f"fp32_gemv_m{self.m}_n{self.n}_k{self.k}"
        form = f"_{self.form}" if self.form else ""
        return f"{FAMILY}_{self.arith}{form}_m{self.m}_n{self.n}_k{self.k}_b{self.bits}"


def supports(spec: GemvSpec, profile) -> str:
    """Why ``spec`` cannot use a GEMV kernel on ``profile``'s core ('' when it can)."""
    if spec.arith == "lut":
        if spec.bits > 4:
            return f"{spec.bits}-bit indices (the lut tables hold 16 entries)"
        if spec.rows % (2 * LUT_LANES):
            return f"{spec.rows} rows per tile (lut: a multiple of {2 * LUT_LANES})"
        if spec.form == "gather":
            return ""
        if spec.form == "tbl":
            if not profile.is_arm:
                return "the lut GEMV's tbl form is written for aarch64"
            return "" if spec.rows == 32 else f"{spec.rows} rows per tile (tbl form: 32)"
    if spec.arith != "fp32" and not profile.is_x86:
        return f"the {spec.arith} GEMV kernel is written for x86"
    missing = [c for c in (FORM_NEEDS[spec.form] if spec.form else NEEDS[spec.arith])
               if not profile.has(c)]
    if missing:
        return f"the target lacks {', '.join(missing)}"
    if spec.arith != "fp32" and spec.bits > 4:
        return f"{spec.bits}-bit indices (the lookup holds 16 entries)"
    if spec.arith in ("exact", "fp32") and spec.k % spec.chunk:
        return f"K={spec.k} is not a multiple of {spec.chunk}"
    if spec.n % spec.rows and spec.arith != "lut":
        return f"N={spec.n} is not a multiple of {spec.rows} rows"
    return ""


#: Rows per register tile, by arithmetic: int8 accumulators are one register per row and
#: each 128-byte ``Xq`` load then serves 8 rows (measured 0.10 against 0.10-0.12 ms with 4
#: rows for 4096x4096, noisy); exact keeps 4 rows (8 measured no better).
ROWS = {"exact": 4, "int8": 8, "fp32": 4, "lut": 32}


def rows_for(n: int, arith: str, form: str = "") -> int:
    """Rows per register tile for ``n`` features: ``ROWS[arith]`` or the largest power of
    two below it that divides ``n`` (lut: 32, or 16 where that wastes fewer padded rows; the
    last tile of a lut kernel may be partial; its tbl form: 32, 16 per lookup)."""
    if arith == "lut" and form == "tbl":
        return 32
    if arith == "lut":
        return 32 if -(-n // 32) * 32 <= -(-n // 16) * 16 else 16
    r = ROWS[arith]
    while n % r:
        r //= 2
    return r


def pack(spec: GemvSpec, indices: np.ndarray) -> np.ndarray:
    """``uint8[packed_shape]``: the indices ``[N, K]`` (values below 16) in the chunked nibble
    layout of the module docstring."""
    idx = np.zeros((spec.n, spec.kp), np.uint8)
    idx[:, :spec.k] = np.asarray(indices, np.uint8).reshape(spec.n, spec.k)
    half = spec.chunk // 2
    c = idx.reshape(spec.n // spec.rows, spec.rows, spec.kp // spec.chunk, 2, half)
    b = c[:, :, :, 0] | (c[:, :, :, 1] << 4)  # [N/rows, rows, chunks, half]
    return np.ascontiguousarray(b.transpose(0, 2, 1, 3)).reshape(spec.packed_shape)


def lut_pack(spec: GemvSpec, indices: np.ndarray) -> np.ndarray:
    """``uint8[packed_shape]`` of the lut kernel: per row and group of ``g`` weights the index
    ``sum_i idx[n, g*q + i] << (bits * i)``, in the nibble layout of ``packed_shape``
    (padding rows and weights have index 0: weight 0)."""
    nt, q, half = spec.packed_shape
    g, b = spec.group, spec.bits
    idx = np.zeros((nt * spec.rows, q * g), np.uint8)
    idx[:spec.n, :spec.k] = np.asarray(indices, np.uint8).reshape(spec.n, spec.k)
    grp = idx.reshape(nt * spec.rows, q, g).astype(np.uint32)
    e = (grp << (b * np.arange(g, dtype=np.uint32))).sum(axis=2).astype(np.uint8)
    e = e.reshape(nt, 2, half, q)  # [tile, low / high nibble, byte, group]
    return np.ascontiguousarray((e[:, 0] | (e[:, 1] << 4)).transpose(0, 2, 1))


def lut_codebooks(spec: GemvSpec, codebook: np.ndarray) -> np.ndarray:
    """``float32[g, entries]``: row ``i`` holds, for every table index ``e``, the codebook
    entry of the group's weight ``i`` (``codebook[(e >> bits*i) & (2^bits - 1)]``), so that a
    table row is ``sum_i X[g*q + i] * rows[i]``."""
    cb = np.zeros(1 << spec.bits, np.float32)
    cb[:len(codebook)] = codebook
    e = np.arange(spec.entries)
    used = e < (1 << (spec.group * spec.bits))
    out = [np.where(used, cb[(e >> (spec.bits * i)) & ((1 << spec.bits) - 1)], 0)
           for i in range(spec.group)]
    return np.asarray(out, np.float32)


def lut_scale(spec: GemvSpec, scale=None) -> np.ndarray:
    """The per-feature scale padded to whole tiles (ones without one)."""
    out = np.ones(spec.packed_shape[0] * spec.rows, np.float32)
    if scale is not None:
        out[:spec.n] = scale
    return out


def codebook16(codebook: np.ndarray) -> np.ndarray:
    """The float32 codebook zero-padded to the 16 entries of one ``vpermps`` table."""
    out = np.zeros(16, np.float32)
    out[:len(codebook)] = codebook
    return out


@dataclasses.dataclass
class Int8Weights:
    """Operands of an int8 GEMV made at compile time from indices and codebook."""

    packed: np.ndarray  # uint8[packed_shape]
    table: np.ndarray  # int8[64]: the int8 codebook, 16 entries repeated per 128-bit lane
    corr: np.ndarray  # int32[N]: 128 * sum_k Wq[n, k]
    d: np.ndarray  # float32[N]: s_cb * scale[n]


def int8_weights(spec: GemvSpec, indices, codebook, scale=None) -> Int8Weights:
    q, d = quantize_codebook(codebook, scale, spec.n)
    q16 = np.zeros(16, np.int8)
    q16[:len(q)] = q
    idx = np.asarray(indices).reshape(spec.n, spec.k)
    corr = 128 * q16[idx].astype(np.int64).sum(axis=1)
    return Int8Weights(pack(spec, idx), np.tile(q16, 2 if spec.form == "avx2" else 4),
                       corr.astype(np.int32), d)


def operands(spec: GemvSpec, indices, codebook, scale=None) -> list[np.ndarray]:
    """The constant operands of a codebook GEMV kernel (all but ``X`` and ``Y``), made at
    compile time from the layer's indices ``[N, K]``, codebook and per-feature scale."""
    if spec.arith == "lut":
        return [lut_pack(spec, indices), lut_codebooks(spec, codebook), lut_scale(spec, scale)]
    if spec.arith == "exact":
        scale = np.ones(spec.n, np.float32) if scale is None else scale
        return [pack(spec, indices), codebook16(codebook), scale]
    q = int8_weights(spec, indices, codebook, scale)
    if spec.form == "avx2":
        return [q.packed, q.table, q.d]
    return [q.packed, q.table, q.corr, q.d]


def _finish(func, spec: GemvSpec):
    return func.with_attrs({
        KERNEL_ATTR: FAMILY,
        SPEC_ATTR: json.dumps(dataclasses.asdict(spec)),
        "op_pattern": OPAQUE,
        "tirx.noalias": True,
    })


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
        return _finish(_int8_avx2(spec), spec)
    return _finish({"exact": _exact, "int8": _int8, "fp32": _fp32,
                    "lut": _lut}[spec.arith](spec), spec)


def _lut(spec: GemvSpec):
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


def _exact(spec: GemvSpec):
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


def _int8_avx2(spec: GemvSpec):
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


def _fp32(spec: GemvSpec):
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


def _int8(spec: GemvSpec):
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
    q, d = quantize_codebook(codebook, scale, spec.n)
    xq, sx = quantize_input(x)
    acc = xq.astype(np.int64) @ q[idx].astype(np.int64).T
    return acc.astype(np.float32) * (sx * d)[None, :]


def schedule(func: tvm.tirx.PrimFunc, knobs: dict) -> tvm.tirx.PrimFunc:
    """The kernel as written (it is written scheduled), except the lut GEMV's ``tbl`` form
    for a target whose schedule file does not say ``"lookup": "tbl"``: there it is rebuilt
    in its one-load-per-lookup form, the same sums in the same order (so a module lowered for
    aarch64 builds for this host too, as the tests' host twins of ARM builds do)."""
    spec = GemvSpec(**json.loads(str(func.attrs[SPEC_ATTR])))
    if spec.form == "tbl" and knobs.get("lookup") != "tbl":
        return compute(dataclasses.replace(spec, form="gather"))
    return func


#: Not a tuning task: the kernel has no blocks for MetaSchedule to transform.
apply = None
#: No knobs in the schedule files: ``lookup`` (``tbl`` on aarch64) follows from the core, the
#: tile (``rows``) is chosen at lowering.
KNOBS = False
