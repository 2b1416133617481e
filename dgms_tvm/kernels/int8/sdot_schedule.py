"""The hand schedule of the int8 conv (:mod:`.sdot`): register tiles, micro-kernels, and
the function attributes it reads off the kernel."""

from __future__ import annotations

import tvm

from ..conv import Conv2dSpec
from . import vnni
from .operands.quantize import padded_out_w

#: Function attribute of an int8 conv2d that reads its weight decoded by a q8_decode kernel.
PREDECODED_ATTR = "dgms.predecoded"
#: Function attribute of an int8 conv2d whose input is stored + 128 as uint8 (x86 VNNI).
UNSIGNED_ATTR = "dgms.unsigned"
#: Function attributes: its epilogue, and the int8 layout it writes (JSON; absent: none).
EPILOGUE_ATTR = "dgms.epilogue"
OUT_ATTR = "dgms.out"


def quad(spec: Conv2dSpec, knobs: dict, unsigned: bool = False) -> bool:
    """Whether the conv runs a 4-pixel x 4-channel x 4-input micro-kernel (4 pixels' inputs
    per load; any column stride, the quantized input being deinterleaved by it): ``sdot`` on
    cores with dotprod, ``vpdpbusd`` on x86 with VNNI (which needs the unsigned input)."""
    del spec
    return knobs.get("dot") == "sdot" or (knobs.get("dot") == "vnni" and unsigned)

def rows_form(spec: Conv2dSpec, knobs: dict, unsigned: bool) -> bool:
    """Whether the conv runs x86 ``vpdpbusd`` in rows of 16 pixels (:mod:`.vnni`)."""
    return unsigned and knobs.get("dot") == "vnni" and vnni.rows(spec)

def register_tile(spec: Conv2dSpec, knobs: dict, unsigned: bool = False) -> tuple[int, int]:
    """(columns, 4-channel blocks) of the register tile: the divisors of the computed width
    and channel count (up to ``ow_tile`` / ``oc_blocks``; columns in fours for the 4-pixel
    micro-kernel) with the fewest instructions per ``sdot`` whose accumulators, inputs and one
    weight vector fit in ``registers``.

    Per reduction step a tile loads one weight vector per block and one input vector per
    column (per 4 columns with the micro-kernel); once per tile it dequantizes its outputs
    (about 1.5 instructions per output in 4-column vectors, 3.5 otherwise), which weighs on
    layers with a short reduction (a 1x1 conv over 16 channels has 4 ``sdot`` per output)."""
    steps = (spec.icg + 3) // 4 * spec.kernel[0] * spec.kernel[1]  # sdot per output/4
    if rows_form(spec, knobs, unsigned):
        return vnni.register_tile(spec, knobs)
    width, per = padded_out_w(spec, unsigned), (4 if quad(spec, knobs, unsigned) else 1)
    # x86 VNNI: one 512-bit accumulator and one vpdpbusd per 4 pixels x 4 channels, and each
    # 4 pixels' inputs take a load and a permute (the tile sizes it measured best at:
    # docs/kernels.md).
    lanes = 4 if per == 4 and knobs.get("dot") == "vnni" else 1
    best, cost = (per, 1), float("inf")
    for xt in (d for d in range(per, max(knobs["ow_tile"], per) + 1, per) if width % d == 0):
        for ob in (d for d in range(1, knobs["oc_blocks"] + 1)
                   if (spec.out_channels // 4) % d == 0):
            dots = xt * ob // lanes
            if dots + xt // per + 1 > knobs["registers"] - 2:
                continue
            c = ((xt // per) * (2 if lanes > 1 else 1) + ob + dots) / dots \
                + (1.5 if xt % 4 == 0 else 3.5) * 4 / steps
            if c < cost - 1e-9:
                best, cost = (xt, ob), c
    return best

#: Input channel blocks (of 4) from which the sdot conv keeps its accumulators channel-major
#: (each register 4 pixels of one channel: stored as they are, where pixel-major ones are
#: transposed by lane moves). With fewer, LLVM unrolls the whole reduction loop, hoists the
#: channel-major form's per-lane weight broadcasts out of the tile loop and spills them
#: (the neoverse-n1 counts behind the threshold: docs/kernels.md).
CHANNEL_MAJOR_BLOCKS = 16

def channel_major(spec: Conv2dSpec) -> bool:
    return (spec.icg + 3) // 4 >= CHANNEL_MAJOR_BLOCKS

def schedule(func: tvm.tirx.PrimFunc, knobs: dict) -> tvm.tirx.PrimFunc:
    """Hand-written CPU schedule; ``knobs`` come from ``schedules/<target>.json``.

    Knobs: ``oc_blocks`` / ``ow_tile`` (the largest register tile in 4-channel blocks / output
    columns, see :func:`register_tile`), ``registers`` (vector registers), ``dot`` (``sdot``:
    the dotprod instruction; ``none``: generic vector code).
    """
    sch = tvm.s_tir.Schedule(func)
    apply(sch, knobs)
    return sch.mod["main"]

def store_tile(sch, deq, group: int = 0) -> None:
    """The dequantize of a register tile unrolled, its stores vectorised: 4 columns of a
    channel at a time (float32 NCHW), or, writing int8 in groups of ``group`` channels
    (``[.., W, group]`` bytes), 4 columns x ``group`` channels at once."""
    do, dx = sch.get_loops(deq)[-2:]
    do_o, do_i = sch.split(do, [None, group or 4])
    dx_o, dx_i = sch.split(dx, [None, 4])
    if group:
        sch.reorder(do_o, dx_o, dx_i, do_i)
        sch.unroll(do_o)
        sch.unroll(dx_o)
        sch.vectorize(sch.fuse(dx_i, do_i))
    else:
        sch.reorder(do_o, dx_o, do_i, dx_i)
        for loop in (do_o, dx_o, do_i):
            sch.unroll(loop)
        sch.vectorize(dx_i)


def apply(sch, knobs: dict, sample: bool = False) -> None:
    """The schedule's steps on ``sch`` (no sampled form yet: tuning leaves int8 kernels to
    this hand schedule)."""
    spec = Conv2dSpec.from_func(sch.mod["main"])
    func = sch.mod["main"]
    predecoded = bool(int(func.attrs[PREDECODED_ATTR]))
    unsigned = UNSIGNED_ATTR in func.attrs and bool(int(func.attrs[UNSIGNED_ATTR]))
    int8_out = OUT_ATTR in func.attrs  # [.., W, 4] bytes: pixel-major tiles store as they are
    major = channel_major(spec) and not int8_out
    if rows_form(spec, knobs, unsigned):
        return vnni.apply(sch, spec, knobs, predecoded)
    acc, deq = sch.get_sblock("acc"), sch.get_sblock("dequant")
    # Step 1. Register tile: xt columns x 4*ob channels, summed 4 input channels at a time;
    # with sdot the innermost 4 pixels x 4 channels x 4 inputs are one micro-kernel call
    # (4 indexed sdot, .intrin).
    n, o, yy, xx, rr, rq, rb, rc = sch.get_loops(acc)
    xt, ob = register_tile(spec, knobs, unsigned)
    oo, oi, o4 = sch.split(o, [None, ob, 4])
    four = quad(spec, knobs, unsigned)
    x86_quad = four and knobs["dot"] == "vnni"
    if four:
        xo, xi, x4 = sch.split(xx, [None, xt // 4, 4])
        # Two reduction steps per loop trip (the loop's own 3 to 4 instructions count
        # against 16 to 24 sdot otherwise).
        rbo, rbi = sch.split(rb, [None, 2 if (spec.icg + 3) // 4 % 2 == 0 else 1])
        # The window's rows and columns unrolled inside the channel loop: the accumulators
        # then stay in registers for the whole reduction (LLVM keeps a tile in registers
        # across one loop, and would load and store it around each window position).
        sch.reorder(n, oo, yy, xo, rbo, rr, rq, rbi, oi, xi, x4, o4, rc)
        sch.unroll(rr)
        sch.unroll(rq)
        sch.unroll(rbi)
    else:  # generic: the 4 channels are the vector lanes, summed over the 4 inputs
        xo, xi = sch.split(xx, [None, xt])
        sch.reorder(n, oo, yy, xo, rr, rq, rb, oi, xi, rc, o4)
    # Step 2. Accumulate in a local tile laid out channel-innermost (what sdot writes), and
    # dequantize it straight from there.
    local = sch.cache_write(acc, 0, "local")
    sch.compute_inline(local)
    if x86_quad:  # each 4-pixel x 4-channel sub-tile contiguous: one 512-bit accumulator
        sch.transform_layout(acc, ("write", 0), lambda n_, o_, y_, x_: (
            n_, y_, x_ // 4, o_ // 4, x_ % 4, o_ % 4))
    elif four and major:  # 4 pixels of one channel per register (NCHW's order)
        sch.transform_layout(acc, ("write", 0), lambda n_, o_, y_, x_: (n_, y_, o_, x_))
    else:
        sch.transform_layout(acc, ("write", 0), lambda n_, o_, y_, x_: (n_, y_, x_, o_))
    sch.reverse_compute_at(deq, xo)
    # Step 3. Decode the int8 weight tile once per output-channel tile (one lookup per weight
    # per call).
    if not predecoded:
        sch.compute_at(sch.get_sblock("decode"), oo)
    sch.parallel(sch.fuse(n, oo))
    sch.unroll(oi)
    sch.unroll(xi)
    if four:
        from ..intrin import sdot_4x4x4, vnni_4x4x4

        init = sch.decompose_reduction(acc, rbo)
        sch.vectorize(sch.get_loops(init)[-1])
        sch.tensorize(x4, vnni_4x4x4() if x86_quad else sdot_4x4x4(major))
        if x86_quad:  # (rows of at most 8 columns, .vnni) Step 4 below, for 512-bit tiles:
            # the zeroing and dequantize unrolled, each output row one vector (LLVM's lane
            # moves instead of the gathers and scatters of a stack tile: docs/kernels.md)
            for loop in sch.get_loops(init)[-6:-2]:
                sch.unroll(loop)
            do, dx = sch.get_loops(deq)[-2:]
            do_o, do_i = sch.split(do, [None, 4])
            sch.reorder(do_o, do_i, dx)
            sch.unroll(do_o)
            sch.unroll(do_i)
            sch.vectorize(dx)
            sch.set_scope(init, 0, "global")
        else:
            # Step 4. The tile's initialisation and dequantize fully unrolled: every access to
            # the accumulator tile then has a constant index, so LLVM keeps the tile in
            # registers from the zeroing through the sums to the dequantize (which stores a
            # channel-major register as it is, and transposes pixel-major ones by lane
            # moves), with no stores to a stack tile and no single-lane loads back from it.
            # TVM would allocate a "local" buffer inside the parallel loop from the
            # workspace pool (a pointer LLVM cannot see through); a small "global" one is a
            # stack array, which LLVM promotes to registers.
            for loop in sch.get_loops(init)[-4:-1]:
                sch.unroll(loop)
            store_tile(sch, deq, 4 if int8_out else 0)
            sch.set_scope(init, 0, "global")
    else:
        sch.unroll(rc)
        sch.vectorize(o4)
        sch.decompose_reduction(acc, rr)
    del sample
