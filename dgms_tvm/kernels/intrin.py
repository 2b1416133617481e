"""Tensor intrinsics of the int8 kernels, registered on first use.

TVM ships a 4x4 ``sdot`` intrinsic (``tvm.s_tir.tensor_intrin.arm_cpu``: 4 outputs x 4
inputs, one pixel), but its description indexes with int32 while our kernels index with int64
(Relax's shapes), so it never matches; importing that package also costs about a minute (it
builds every target's intrinsics); and broadcasting one pixel's 4 bytes per ``sdot`` needs a
load and an address per pixel. These are 4-pixel forms with int64 indices, accumulating into a
local (register) tile: on aarch64 pixel-major (a register holds 4 channels of one pixel) or
channel-major (4 pixels of one channel, NCHW's order), on x86 one 512-bit register per 4
pixels x 4 channels.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

SDOT_4X4X4 = "dgms_sdot_4x4x4_i8i8i32_i64"
SDOT_4X4X4_OX = "dgms_sdot_4x4x4_i8i8i32_i64_ox"


def _sdot_row(C, full, lanes, i: int):
    """``C[i, 0:4] += sdot(full's 16 bytes, lanes's 4 bytes at lane i in every lane)``
    (LLVM emits the indexed sdot)."""
    return T.call_llvm_pure_intrin(
        "int32x4", "llvm.aarch64.neon.sdot.v4i32.v16i8", C[i, T.ramp(T.int64(0), 1, 4)],
        full.vload([T.int64(0), T.int64(0)], dtype="int8x16"),
        T.reinterpret("int8x16", T.Shuffle([T.reinterpret("int32x4", lanes.vload(
            [T.int64(0), T.int64(0)], dtype="int8x16"))], [i, i, i, i])))


def _sdot_quad(channel_major: bool):
    """(description, implementation) of the 4-pixel x 4-channel x 4-input sdot micro-kernel:
    ``acc[x, o] += sum_k A[x, k] * B[o, k]`` with one 16-byte load of 4 pixels' inputs (A)
    and one of 4 channels' weights (B). Pixel-major (C indexed ``[x, o]``): a register holds
    4 channels of one pixel, pixel x's inputs broadcast from lane x. Channel-major (C indexed
    ``[o, x]``): a register holds 4 pixels of one channel (NCHW's order: the dequantize stores
    it as it is, with no transpose), channel o's weights broadcast from lane o."""

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (T.int64(4), T.int64(4)), "int8", offset_factor=1)
        B = T.match_buffer(b, (T.int64(4), T.int64(4)), "int8", offset_factor=1)
        sc = T.int64()
        C = T.match_buffer(c, (T.int64(4), T.int64(4)), "int32", offset_factor=1,
                           scope="local", strides=(sc, T.int64(1)))
        with T.sblock("root"):
            T.reads(C[0:4, 0:4], A[0:4, 0:4], B[0:4, 0:4])
            T.writes(C[0:4, 0:4])
            for x, o, k in T.grid(T.int64(4), T.int64(4), T.int64(4)):
                with T.sblock("update"):
                    vo, vx, vk = T.axis.remap("SSR", [o, x, k])  # the kernels' block order
                    if channel_major:
                        C[vo, vx] = C[vo, vx] + T.Cast("int32", A[vx, vk]) * T.Cast(
                            "int32", B[vo, vk])
                    else:
                        C[vx, vo] = C[vx, vo] + T.Cast("int32", A[vx, vk]) * T.Cast(
                            "int32", B[vo, vk])

    full, lanes = ((0, 1) if channel_major else (1, 0))  # which operand is broadcast

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (T.int64(4), T.int64(4)), "int8", offset_factor=1)
        B = T.match_buffer(b, (T.int64(4), T.int64(4)), "int8", offset_factor=1)
        sc = T.int64()
        C = T.match_buffer(c, (T.int64(4), T.int64(4)), "int32", offset_factor=1,
                           scope="local", strides=(sc, T.int64(1)))
        with T.sblock("root"):
            T.reads(C[0:4, 0:4], A[0:4, 0:4], B[0:4, 0:4])
            T.writes(C[0:4, 0:4])
            C[0, T.ramp(T.int64(0), 1, 4)] = _sdot_row(C, (A, B)[full], (A, B)[lanes], 0)
            C[1, T.ramp(T.int64(0), 1, 4)] = _sdot_row(C, (A, B)[full], (A, B)[lanes], 1)
            C[2, T.ramp(T.int64(0), 1, 4)] = _sdot_row(C, (A, B)[full], (A, B)[lanes], 2)
            C[3, T.ramp(T.int64(0), 1, 4)] = _sdot_row(C, (A, B)[full], (A, B)[lanes], 3)

    return desc, impl


def sdot_4x4x4(channel_major: bool = False) -> str:
    """Name of the registered sdot micro-kernel (see :func:`_sdot_quad`)."""
    name = SDOT_4X4X4_OX if channel_major else SDOT_4X4X4
    if TensorIntrin.get(name, allow_missing=True) is None:
        TensorIntrin.register(name, *_sdot_quad(channel_major))
    return name


SMMLA_2X2X8 = "dgms_smmla_2x2x8_i8i8i32_i64"


@T.prim_func(s_tir=True)
def _smmla_desc(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (T.int64(2), T.int64(8)), "int8", offset_factor=1)
    B = T.match_buffer(b, (T.int64(2), T.int64(8)), "int8", offset_factor=1)
    C = T.match_buffer(c, (T.int64(2), T.int64(2)), "int32", offset_factor=1, scope="local",
                       strides=(T.int64(2), T.int64(1)))
    with T.sblock("root"):
        T.reads(C[0:2, 0:2], A[0:2, 0:8], B[0:2, 0:8])
        T.writes(C[0:2, 0:2])
        for x, o, k in T.grid(T.int64(2), T.int64(2), T.int64(8)):
            with T.sblock("update"):
                vo, vx, vk = T.axis.remap("SSR", [o, x, k])  # the kernels' block order
                C[vx, vo] = C[vx, vo] + T.Cast("int32", A[vx, vk]) * T.Cast("int32", B[vo, vk])


@T.prim_func(s_tir=True)
def _smmla_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (T.int64(2), T.int64(8)), "int8", offset_factor=1)
    B = T.match_buffer(b, (T.int64(2), T.int64(8)), "int8", offset_factor=1)
    C = T.match_buffer(c, (T.int64(2), T.int64(2)), "int32", offset_factor=1, scope="local",
                       strides=(T.int64(2), T.int64(1)))
    with T.sblock("root"):
        T.reads(C[0:2, 0:2], A[0:2, 0:8], B[0:2, 0:8])
        T.writes(C[0:2, 0:2])
        # lane 2x + o of the 2 x 2 block: pixel x's 8 bytes (A's row x) against channel o's
        # (B's row o)
        C[0, T.ramp(T.int64(0), 1, 4)] = T.call_llvm_pure_intrin(
            "int32x4", "llvm.aarch64.neon.smmla.v4i32.v16i8", C[0, T.ramp(T.int64(0), 1, 4)],
            A.vload([T.int64(0), T.int64(0)], dtype="int8x16"),
            B.vload([T.int64(0), T.int64(0)], dtype="int8x16"))


def smmla_2x2x8() -> str:
    """Name of the registered ``smmla`` micro-kernel: ``C[x, o] += sum_k A[x, k] * B[o, k]``
    for 2 pixels x 2 channels x 8 inputs, each operand one 16-byte load, ``C`` one register
    (the 2 x 2 block's 4 sums, pixel-major: :mod:`.int8.smmla`)."""
    if TensorIntrin.get(SMMLA_2X2X8, allow_missing=True) is None:
        TensorIntrin.register(SMMLA_2X2X8, _smmla_desc, _smmla_impl)
    return SMMLA_2X2X8


VNNI_4X4X4 = "dgms_vnni_4x4x4_u8i8i32_i64"


@T.prim_func(s_tir=True)
def _vnni_desc(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (T.int64(4), T.int64(4)), "uint8", offset_factor=1)
    B = T.match_buffer(b, (T.int64(4), T.int64(4)), "int8", offset_factor=1)
    C = T.match_buffer(c, (T.int64(4), T.int64(4)), "int32", offset_factor=1, scope="local")
    with T.sblock("root"):
        T.reads(C[0:4, 0:4], A[0:4, 0:4], B[0:4, 0:4])
        T.writes(C[0:4, 0:4])
        for x, o, k in T.grid(T.int64(4), T.int64(4), T.int64(4)):
            with T.sblock("update"):
                vo, vx, vk = T.axis.remap("SSR", [o, x, k])  # the kernels' block order
                C[vx, vo] = C[vx, vo] + T.Cast("int32", A[vx, vk]) * T.Cast("int32", B[vo, vk])


@T.prim_func(s_tir=True)
def _vnni_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (T.int64(4), T.int64(4)), "uint8", offset_factor=1)
    B = T.match_buffer(b, (T.int64(4), T.int64(4)), "int8", offset_factor=1)
    C = T.match_buffer(c, (T.int64(4), T.int64(4)), "int32", offset_factor=1, scope="local")
    with T.sblock("root"):
        T.reads(C[0:4, 0:4], A[0:4, 0:4], B[0:4, 0:4])
        T.writes(C[0:4, 0:4])
        # The whole 4x4 tile is one 512-bit accumulator, lane 4x + o: pixel x's 4 bytes
        # repeated for its 4 channels, the 4 channels' 4 weights repeated for the 4 pixels.
        C[0, T.ramp(T.int64(0), 1, 16)] = T.call_llvm_pure_intrin(
            "int32x16", "llvm.x86.avx512.vpdpbusd.512", C[0, T.ramp(T.int64(0), 1, 16)],
            T.reinterpret("uint8x64", T.Shuffle(  # (a shuffle's inputs must hold its lanes)
                [T.reinterpret("int32x4", A.vload([T.int64(0), T.int64(0)], dtype="uint8x16"))]
                * 4, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])),
            T.reinterpret("int8x64", T.Shuffle(
                [T.reinterpret("int32x4", B.vload([T.int64(0), T.int64(0)], dtype="int8x16"))]
                * 4, [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3])))


def vnni_4x4x4() -> str:
    """Name of the registered 4-pixel x 4-channel x 4-input VNNI micro-kernel (unsigned
    inputs, signed weights: the x86 int8 conv stores its activations + 128)."""
    if TensorIntrin.get(VNNI_4X4X4, allow_missing=True) is None:
        TensorIntrin.register(VNNI_4X4X4, _vnni_desc, _vnni_impl)
    return VNNI_4X4X4
