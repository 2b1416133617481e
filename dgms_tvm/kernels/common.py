"""Pieces every codebook kernel shares: the index decode expression and tile choices."""

from __future__ import annotations

import tvm
from tvm import te
from tvm.script import tirx as T

from ..format import check_bits

#: Function attribute that marks a PrimFunc as a codebook kernel; its value is the kernel
#: family ("cb_conv2d", "cb_dense"). Passes and schedules find kernels by this, never by name.
KERNEL_ATTR = "dgms.kernel"
#: Function attribute holding the kernel's specialisation (a JSON string of its spec).
SPEC_ATTR = "dgms.spec"
#: ``bits`` value meaning "the weight operand is the float32 weight itself": the FP32
#: baseline runs through the same compute and schedule as the codebook kernels, so that a
#: speedup measures the codebook and nothing else.
FP32_WEIGHT = 32
#: Relax's op pattern "opaque": keeps FuseOps from folding neighbours into a codebook kernel,
#: so that its hand-written schedule applies to exactly the compute it was written for.
OPAQUE = 8


def i64(v: int):
    """An int64 immediate: Relax call_tir callees use int64 shapes throughout."""
    return tvm.tirx.IntImm("int64", int(v))


def decode_index(packed: te.Tensor, row, k, bits: int):
    """TIR expression of index ``k`` of row ``row`` in a packed ``uint8[O, row_bytes]`` buffer.

    Follows the layout of :mod:`dgms_tvm.format`: an LSB-first bit stream per row. For widths
    that divide 8 an index never leaves its byte; a 3-bit index may straddle two bytes, and
    the second byte is read only when it does (so no read past the row's end).
    """
    bits = check_bits(bits)
    mask = tvm.tirx.const((1 << bits) - 1, "int32")
    if 8 % bits == 0:
        per = 8 // bits
        byte = packed[row, k // per].astype("int32")
        if bits == 8:
            return byte
        shift = ((k % per) * bits).astype("int32")
        return (byte >> shift) & mask
    bit = k * bits
    shift = (bit % 8).astype("int32")
    lo = packed[row, bit // 8].astype("int32")
    hi = tvm.tirx.if_then_else(
        shift > 8 - bits, packed[row, bit // 8 + 1].astype("int32"), tvm.tirx.const(0, "int32")
    )
    return ((lo | (hi << 8)) >> shift) & mask


def span(base, lanes: int):
    """The index of ``lanes`` contiguous elements from ``base`` in a written-scheduled kernel
    (a scalar index for one: TIR has no 1-lane ramp)."""
    return base if lanes == 1 else T.Ramp(base, 1, lanes)


def splat(value, lanes: int):
    """``value`` in ``lanes`` lanes (itself for one: TIR has no 1-lane broadcast)."""
    return value if lanes == 1 else T.Broadcast(value, lanes)


def as_kernel(func: tvm.tirx.PrimFunc, family: str, spec_json: str) -> tvm.tirx.PrimFunc:
    """``func`` marked as a codebook kernel of ``family`` (opaque to fusion, its buffers not
    aliased), its spec attached."""
    return func.with_attrs({
        KERNEL_ATTR: family,
        SPEC_ATTR: spec_json,
        "op_pattern": OPAQUE,
        "tirx.noalias": True,
    })


def best_tile(extent: int, limit: int) -> int:
    """Largest divisor of ``extent`` that is at most ``limit``.

    Tiles divide their loop exactly, so no tail predicate blocks vectorisation.
    """
    limit = max(1, min(limit, extent))
    return max(d for d in range(1, limit + 1) if extent % d == 0)


def standalone(func: tvm.tirx.PrimFunc, name: str = "main") -> tvm.IRModule:
    """A kernel as a module of its own, exported as ``name`` (for tests and tuning)."""
    return tvm.IRModule({name: func.with_attr("global_symbol", name)})


class Tiler:
    """The tile decisions of a hand schedule, fixed or sampled.

    ``sample=False`` is the hand schedule as written. ``sample=True`` turns it into a
    MetaSchedule design space: every tile size becomes a ``sample_perfect_tile`` decision
    whose initial value is the hand knob, and vectorisation / unrolling are left to the
    tuner's postprocessors (root-block annotations), which is what its mutators can change.
    In that mode nothing may depend on a loop count that a sampled tile changes.
    """

    def __init__(self, sch, sample: bool = False):
        self.sch, self.sample = sch, sample

    def split(self, loop, extent: int, tile: int, max_inner: int = 64):
        if not self.sample:
            return self.sch.split(loop, [None, tile])
        factors = self.sch.sample_perfect_tile(loop, n=2, max_innermost_factor=max(tile,
                                                                                    max_inner),
                                               decision=[extent // tile, tile])
        return self.sch.split(loop, factors)

    def vectorize(self, *get_loop):
        """Vectorise loops (given as thunks: in the sampled space their lookup would depend
        on the sampled tiles, so it is not made)."""
        if not self.sample:
            for get in get_loop:
                self.sch.vectorize(get())

    def finish(self, block, loop) -> None:
        """Split off the accumulator initialisation (hand) or annotate the root for the
        tuner's vectorise / unroll postprocessors (sampled; they also split it)."""
        if not self.sample:
            self.sch.decompose_reduction(block, loop)
            return
        root = self.sch.get_sblock("root")
        self.sch.annotate(root, "meta_schedule.vectorize", 64)
        unroll = self.sch.sample_categorical([0, 16, 64], [1 / 3] * 3, decision=0)
        self.sch.annotate(root, "meta_schedule.unroll_explicit", unroll)
