"""The int8 conv on i8mm cores: ``smmla``, an int8 2 x 8 by 8 x 2 matrix product (32
multiply-adds) per instruction, against ``sdot``'s 16.

The compute is the int8 conv's (:mod:`.sdot`) on input channels in groups of 8
(``depth`` 8: :class:`~.operands.quantize.QuantSpec`, :class:`~.operands.decode.DecodeSpec`): 2
neighbouring output pixels' 8 channels are 16 contiguous bytes of the quantized input (its
columns deinterleaved by the stride, as for ``sdot``), and 2 output channels' 8 weights of a
tap 16 contiguous bytes of the weight ``[O/4, kh, kw, C8/8, 4 (o), 8 (c)]``. One ``smmla``
of the two adds their 2 x 2 products into one register of 4 int32 sums, pixel-major
(:func:`..intrin.smmla_2x2x8`); the accumulator tile is laid out in those 2 x 2 blocks.

Register tile: ``xt`` pixels x ``4 * ob`` channels, ``xt * ob`` accumulators; per step
``xt / 2`` input and ``2 * ob`` weight loads feed ``xt * ob`` ``smmla``
(:func:`register_tile`). On cores without i8mm the same loops run as plain scalar code
(the host tests check the layout there; the emulated ``neoverse-n2`` runs the ``smmla``).
"""

from __future__ import annotations

import tvm

from ..conv import Conv2dSpec
from ..epilogue import Epilogue
from ..protocol import Fusion, Int8Out, KernelFamily
from . import sdot
from .operands.quantize import QuantSpec, padded_out_w
from .sdot_schedule import OUT_ATTR, PREDECODED_ATTR, store_tile

FAMILY = "q8m_conv2d"
#: Input channels per group: one pixel's 8 in a ``smmla`` operand row.
DEPTH = 8


#: Input channels from which the conv reads a layer itself: fewer (the 3-channel stem) would
#: be padded to 8, and their taps gathered into a 1x1 conv (:mod:`.gathered`) waste less.
MIN_CHANNELS = 5


def supports(spec: Conv2dSpec, profile=None) -> str:
    """Empty when the smmla conv can take ``spec`` (as the sdot conv: groups 1, output
    channels in 4s; and at least :data:`MIN_CHANNELS` input channels), else why not."""
    if spec.in_channels < MIN_CHANNELS and spec.groups == 1:
        return (f"{spec.in_channels} input channels (the smmla conv reads 8 at a time: its "
                "taps gathered into a 1x1 conv pad less)")
    return sdot.supports(spec, profile, DEPTH)


def name(spec: Conv2dSpec, predecoded: bool = False, unsigned: bool = False,
         epilogue: Epilogue = Epilogue(), out: QuantSpec | None = None) -> str:
    return sdot.name(spec, predecoded, unsigned, epilogue, out, family=FAMILY)


def compute(spec: Conv2dSpec, predecoded: bool = False, unsigned: bool = False,
            epilogue: Epilogue = Epilogue(), out: QuantSpec | None = None) -> tvm.tirx.PrimFunc:
    """:func:`.sdot.compute` on 8-channel groups (the operands of ``smmla``)."""
    if unsigned:
        raise ValueError("the smmla conv multiplies signed bytes (no unsigned input)")
    return sdot.compute(spec, predecoded, False, epilogue, out, family=FAMILY, depth=DEPTH)


def register_tile(spec: Conv2dSpec, knobs: dict, group: int = 4) -> tuple[int, int]:
    """(pixels, 4-channel blocks) of the register tile: even divisors of the computed width
    (up to ``ow_tile``) and of the 4-channel blocks (up to ``oc_blocks``) with the fewest
    loads per ``smmla``, whose accumulators, one step's inputs and one weight register fit
    in ``registers`` (two spare). Writing int8 in groups of 8 channels (``group``), a tile
    holds whole groups: each pixel's 8 bytes then store at once (a tile of 12 channels
    stored them a byte at a time: docs/kernels.md)."""
    best, cost = None, float("inf")
    for xt, ob in tiles(spec, knobs, group):
        if xt * ob + xt // 2 + 1 > knobs["registers"] - 2:
            continue
        c = (xt // 2 + 2 * ob) / (xt * ob)
        if c < cost - 1e-9:
            best, cost = (xt, ob), c
    return best or tiles(spec, knobs, group)[0]


def tiles(spec: Conv2dSpec, knobs: dict, group: int = 4) -> list[tuple[int, int]]:
    """Every (pixels, 4-channel blocks) tile that splits the layer (whole groups of
    ``group`` channels), up to ``ow_tile`` / ``oc_blocks``: what tuning samples."""
    width, blocks = padded_out_w(spec), spec.out_channels // 4
    step = max(group // 4, 1) if blocks % max(group // 4, 1) == 0 else 1
    return [(xt, ob) for xt in range(2, knobs["ow_tile"] + 1, 2) if width % xt == 0
            for ob in range(step, knobs["oc_blocks"] + 1, step) if blocks % ob == 0]


def schedule(func: tvm.tirx.PrimFunc, knobs: dict) -> tvm.tirx.PrimFunc:
    """Hand-written schedule; ``knobs``: ``ow_tile`` / ``oc_blocks`` / ``registers`` (see
    :func:`register_tile`) and ``mmla`` (``smmla``, or ``""``: plain scalar code)."""
    sch = tvm.s_tir.Schedule(func)
    apply(sch, knobs)
    return sch.mod["main"]


def apply(sch, knobs: dict, sample: bool = False) -> None:
    """The schedule's steps on ``sch``; ``sample``: the tile's pixel pairs and channel
    blocks become MetaSchedule perfect-tile decisions (what its tile-size mutator changes)
    over the divisors up to ``ow_tile`` / 2 and ``oc_blocks`` (:func:`tiles`), their first
    value the hand tile's; the rest as written."""
    func = sch.mod["main"]
    spec = Conv2dSpec.from_func(func)
    out = QuantSpec.from_json(str(func.attrs[OUT_ATTR])) if OUT_ATTR in func.attrs else None
    acc, deq = sch.get_sblock("acc"), sch.get_sblock("dequant")
    # Step 1. Register tile: xt pixels x 4*ob channels, the innermost 2 pixels x 2 channels x
    # 8 inputs one smmla; two reduction steps a loop trip, the window unrolled inside the
    # channel loop (the tile then stays in registers for the whole reduction, as in the
    # sdot conv's schedule).
    n, o, yy, xx, rr, rq, rb, rc = sch.get_loops(acc)
    group = 4 if out is None else out.depth
    xt, ob = register_tile(spec, knobs, group)
    if (4 * ob) % group:
        group = 4
    if sample:  # the tile's two sizes sampled over the loops outside smmla's 2 x 2
        oq, op, o2 = sch.split(o, [None, 2, 2])
        xq, x2 = sch.split(xx, [None, 2])
        nblk, npair = spec.out_channels // 4, padded_out_w(spec) // 2
        oo, oi = sch.split(oq, sch.sample_perfect_tile(
            oq, n=2, max_innermost_factor=knobs["oc_blocks"], decision=[nblk // ob, ob]))
        xo, xi = sch.split(xq, sch.sample_perfect_tile(
            xq, n=2, max_innermost_factor=knobs["ow_tile"] // 2,
            decision=[npair // (xt // 2), xt // 2]))
    else:
        oo, oi, op, o2 = sch.split(o, [None, ob, 2, 2])
        xo, xi, x2 = sch.split(xx, [None, xt // 2, 2])
    steps = (spec.icg + DEPTH - 1) // DEPTH
    rbo, rbi = sch.split(rb, [None, 2 if steps % 2 == 0 else 1])
    sch.reorder(n, oo, yy, xo, rbo, rr, rq, rbi, oi, op, xi, x2, o2, rc)
    smmla = knobs.get("mmla") == "smmla"
    if smmla:  # (plain code stays rolled: the host tests' builds stay quick)
        for loop in (rr, rq, rbi, oi, op, xi):
            sch.unroll(loop)
    # Step 2. The accumulator tile in smmla's 2 x 2 blocks (pixel-major), dequantized from
    # there.
    local = sch.cache_write(acc, 0, "local")
    sch.compute_inline(local)
    sch.transform_layout(acc, ("write", 0), lambda n_, o_, y_, x_: (
        n_, y_, x_ // 2, o_ // 2, x_ % 2, o_ % 2))
    sch.reverse_compute_at(deq, xo)
    if not bool(int(func.attrs[PREDECODED_ATTR])):
        sch.compute_at(sch.get_sblock("decode"), oo)
    sch.parallel(sch.fuse(n, oo))
    init = sch.decompose_reduction(acc, rbo)
    if not smmla:  # plain scalar code: the layout's check on hosts without i8mm
        return
    from ..intrin import smmla_2x2x8

    sch.tensorize(x2, smmla_2x2x8())
    # Step 3. Zeroing and dequantize unrolled (constant indices: the tile stays in
    # registers, see the sdot conv's Step 4), the outputs stored 4 pixels of a channel at a
    # time (float32, NCHW) or 4 pixels x d channels (int8 in the next conv's groups).
    for loop in sch.get_loops(init)[-5:]:
        sch.unroll(loop)
    store_tile(sch, deq, 0 if out is None else group)
    sch.set_scope(init, 0, "global")


def peak(profile, bits: int):
    """``smmla``: a 2 x 8 by 8 x 2 int8 product, 32 multiply-adds."""
    del bits
    return ("smmla", 32) if profile.i8mm else None


KERNEL = KernelFamily(FAMILY, Conv2dSpec, compute, schedule, sdot.reference, supports,
                      apply=apply, knobs=True, peak=peak, searchable=True, generic=False,
                      fusion=Fusion(sdot.with_epilogue, scale=("D",)),
                      int8_out=Int8Out(sdot.bound, sdot.why_not_quantized,
                                       sdot.with_quantized_output))
