"""Tensor intrinsics of the int8 kernels, registered on first use.

TVM ships a 4x4 ``sdot`` intrinsic (``tvm.s_tir.tensor_intrin.arm_cpu``), but its description
indexes with int32 while our kernels index with int64 (Relax's shapes), so it never matches;
importing that package also costs about a minute (it builds every target's intrinsics). This
is the same instruction described with int64 indices, accumulating into a local (register)
tile.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

SDOT_4X4 = "dgms_sdot_4x4_i8i8i32_i64"


@T.prim_func(s_tir=True)
def _sdot_desc(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (T.int64(4),), "int8", offset_factor=1)
    B = T.match_buffer(b, (T.int64(4), T.int64(4)), "int8", offset_factor=1)
    C = T.match_buffer(c, (T.int64(4),), "int32", offset_factor=1, scope="local")
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        for i, k in T.grid(T.int64(4), T.int64(4)):
            with T.sblock("update"):
                vi, vk = T.axis.remap("SR", [i, k])
                C[vi] = C[vi] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vi, vk])


@T.prim_func(s_tir=True)
def _sdot_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (T.int64(4),), "int8", offset_factor=1)
    B = T.match_buffer(b, (T.int64(4), T.int64(4)), "int8", offset_factor=1)
    C = T.match_buffer(c, (T.int64(4),), "int32", offset_factor=1, scope="local")
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        # C[i] += sum_k A[k] * B[i, k]: A's 4 bytes broadcast to every 32-bit lane.
        a4 = T.reinterpret(A.vload([T.int64(0)], "int8x4"), dtype="int32")
        va = T.reinterpret(T.broadcast(a4, 4), dtype="int8x16")
        vb = B.vload([T.int64(0), T.int64(0)], dtype="int8x16")
        vc = C.vload([T.int64(0)], dtype="int32x4")
        C[T.ramp(T.int64(0), 1, 4)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"), vc, va, vb,
            dtype="int32x4")


def sdot_4x4() -> str:
    """Name of the registered int64-indexed sdot intrinsic."""
    if TensorIntrin.get(SDOT_4X4, allow_missing=True) is None:
        TensorIntrin.register(SDOT_4X4, _sdot_desc, _sdot_impl)
    return SDOT_4X4
