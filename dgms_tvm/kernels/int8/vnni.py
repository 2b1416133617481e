"""The x86 form of the int8 conv (:mod:`.sdot`): AVX-512 VNNI ``vpdpbusd`` with channel-major
register tiles.

One ``vpdpbusd`` adds to 16 int32 lanes, each the 4-byte dot product of 4 unsigned inputs
(the activations stored + 128) and 4 signed weights. Here a lane is a pixel and a register
16 neighbouring pixels of one output channel:
- the 16 pixels' 4 input channels are 64 contiguous bytes of the quantized input (its
  ``[.., C/4, phase, W, 4]`` layout, the phases splitting the column stride): one load;
- the channel's 4 weights are 4 contiguous bytes of the tiled weight
  (``[O/4, kh, kw, C/4, 4, 4]``), broadcast by the instruction itself from memory;
- so a register tile of ``P`` vectors x ``K`` channels costs ``P`` loads and ``P*K``
  ``vpdpbusd`` per 4 input channels, and writes NCHW's rows 16 floats at a time.

The computed width is rounded up to 16 columns, the columns past the row reading the
quantized input's zero columns; rows of at most 8 columns keep the 4-pixel x 4-channel form
of :mod:`.sdot`.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from ..conv import Conv2dSpec

#: Output columns from which the conv runs this form: narrower rows would leave most lanes
#: of a 16-pixel register idle, and keep the 4-pixel x 4-channel form of :mod:`.sdot`.
MIN_WIDTH = 9


def rows(spec: Conv2dSpec) -> bool:
    """Whether the x86 int8 conv of ``spec`` runs this form (rows of 16 pixels)."""
    return spec.out_w >= MIN_WIDTH


def padded_width(spec: Conv2dSpec) -> int:
    """The columns the conv computes per row: ``out_w`` rounded up to 16."""
    return (spec.out_w + LANES - 1) // LANES * LANES


#: Pixels per accumulator (a 512-bit register of int32).
LANES = 16
#: Widest row computed as one register tile (its dequantize then writes the row's columns
#: with no tail loop, where a partial vector would take a scalar one).
WHOLE_ROW = 64


def register_tile(spec: Conv2dSpec, knobs: dict) -> tuple[int, int]:
    """(columns, 4-channel blocks) of the register tile: the divisors of the computed width
    (in vectors) and of the channel blocks with the fewest instructions per ``vpdpbusd``
    (per 4 input channels ``P`` input loads for ``P*K`` of them, and once per tile the
    dequantize of ``P*K`` vectors, about 6 instructions each, spread over the reduction)
    whose accumulators and one input vector per column vector fit in ``registers``."""
    n = LANES
    vectors = padded_width(spec) // n
    steps = (spec.icg + 3) // 4 * spec.kernel[0] * spec.kernel[1]
    best, cost = (n, 1), float("inf")
    whole = spec.out_w % n and spec.out_w <= WHOLE_ROW
    for p in (d for d in range(1, vectors + 1)
              if vectors % d == 0 and (d == vectors if whole else d <= knobs["row_vectors"])):
        for ob in (d for d in range(1, knobs["row_blocks"] + 1)
                   if (spec.out_channels // 4) % d == 0):
            dots = p * 4 * ob
            if dots + p > knobs["registers"] - 2:
                continue
            c = (p + dots) / dots + 6 / steps
            if c < cost - 1e-9:
                best, cost = (p * n, ob), c
    return best


def intrinsic(width: int) -> str:
    """Name of the registered ``width``-pixel x 1-channel x 4-input VNNI micro-kernel
    (``C[x] += sum_k A[x, k] * B[k]``: A unsigned, B signed), 16 or 8 pixels."""
    name = f"dgms_vnni_{width}x1x4_u8i8i32_i64"
    if TensorIntrin.get(name, allow_missing=True) is None:
        TensorIntrin.register(name, *_micro_kernel(width))
    return name


def _micro_kernel(width: int):
    bits = 32 * width
    w = T.int64(width)

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (w, T.int64(4)), "uint8", offset_factor=1)
        B = T.match_buffer(b, (T.int64(4),), "int8", offset_factor=1)
        C = T.match_buffer(c, (w,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:width], A[0:width, 0:4], B[0:4])
            T.writes(C[0:width])
            for x, k in T.grid(w, T.int64(4)):
                with T.sblock("update"):
                    vx, vk = T.axis.remap("SR", [x, k])
                    C[vx] = C[vx] + T.Cast("int32", A[vx, vk]) * T.Cast("int32", B[vk])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (w, T.int64(4)), "uint8", offset_factor=1)
        B = T.match_buffer(b, (T.int64(4),), "int8", offset_factor=1)
        C = T.match_buffer(c, (w,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:width], A[0:width, 0:4], B[0:4])
            T.writes(C[0:width])
            # the channel's 4 weights as one int32, repeated in every lane
            C[T.ramp(T.int64(0), 1, width)] = T.call_llvm_pure_intrin(
                f"int32x{width}", f"llvm.x86.avx512.vpdpbusd.{bits}",
                C[T.ramp(T.int64(0), 1, width)],
                A.vload([T.int64(0), T.int64(0)], dtype=f"uint8x{4 * width}"),
                T.reinterpret(f"int8x{4 * width}", T.Broadcast(
                    T.reinterpret("int32", B.vload([T.int64(0)], dtype="int8x4")), width)))

    return desc, impl


def apply(sch, spec: Conv2dSpec, knobs: dict, predecoded: bool) -> None:
    """The x86 VNNI schedule of :func:`.sdot.apply`'s blocks (``acc``, ``dequant``, and
    ``decode`` unless the weight comes ``predecoded``: once per channel tile)."""
    acc, deq = sch.get_sblock("acc"), sch.get_sblock("dequant")
    n, o, yy, xx, rr, rq, rb, rc = sch.get_loops(acc)
    xt, ob = register_tile(spec, knobs)
    px = LANES
    oo, oi, o4 = sch.split(o, [None, ob, 4])
    xo, xi, xv = sch.split(xx, [None, xt // px, px])
    # the window unrolled inside the channel loop: the tile stays in registers throughout
    sch.reorder(n, oo, yy, xo, rb, rr, rq, oi, o4, xi, xv, rc)
    sch.unroll(rr)
    sch.unroll(rq)
    local = sch.cache_write(acc, 0, "local")
    sch.compute_inline(local)
    sch.transform_layout(acc, ("write", 0), lambda n_, o_, y_, x_: (n_, y_, o_, x_))
    sch.reverse_compute_at(deq, xo)
    if not predecoded:
        sch.compute_at(sch.get_sblock("decode"), oo)
    sch.parallel(sch.fuse(n, oo))
    for loop in (oi, o4, xi):
        sch.unroll(loop)
    init = sch.decompose_reduction(acc, rb)
    sch.tensorize(xv, intrinsic(px))
    # The tile's zeroing and dequantize unrolled, a vector per row of it: constant indices,
    # so LLVM keeps the tile in registers (a small "global" tile is a stack array it can
    # promote; a "local" one would come from the workspace pool).
    *_, io, ix = sch.get_loops(init)
    ixo, ixi = sch.split(ix, [None, px])
    sch.unroll(io)
    sch.unroll(ixo)
    sch.vectorize(ixi)
    do, dx = sch.get_loops(deq)[-2:]
    sch.unroll(do)
    if spec.out_w % px and xt == padded_width(spec):  # the whole row in one vector
        sch.vectorize(dx)
    else:
        dxo, dxi = sch.split(dx, [None, px])
        sch.unroll(dxo)
        sch.vectorize(dxi)
    sch.set_scope(init, 0, "global")
