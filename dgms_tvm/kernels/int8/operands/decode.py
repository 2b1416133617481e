"""The int8 strategy's weight decode (the ``q8_decode`` kernel): a layer's packed indices
turned into its int8 weights in the order the conv reads them, 16 per table lookup (NEON
``tbl``, x86 ``pshufb``) where the width allows."""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm.script import tirx as T

from ...common import KERNEL_ATTR, OPAQUE, SPEC_ATTR
from ...conv import Conv2dSpec
from ...protocol import KernelFamily, Spec

FAMILY = "q8_decode"


@dataclasses.dataclass(frozen=True)
class DecodeSpec(Spec):
    """The weight decode of an int8 conv2d: indices re-packed in the order the conv reads
    them, ``[O/4, kh, kw, C4/d, 4 (o), d (c)]`` (``d``: ``depth``, 4 for ``sdot``, 16 for the
    widening conv), in chunks of ``16 * 8/bits`` indices: byte ``j`` of a chunk holds indices
    ``j, 16 + j, 32 + j, ...`` (lowest bits first), so that one shift-and-mask of 16 bytes
    gives 16 consecutive indices and one table lookup (``tbl``) their 16 int8 weights."""

    out_channels: int
    in_channels: int
    kernel: tuple[int, int]
    bits: int
    depth: int = 4

    @classmethod
    def of(cls, spec: Conv2dSpec, depth: int = 4) -> DecodeSpec:
        """A conv's weight ``[O, C/groups, kh, kw]``: its input channels are a group's."""
        return cls(spec.out_channels, spec.icg, tuple(spec.kernel), spec.bits, depth)

    @property
    def shape(self) -> tuple[int, ...]:
        kh, kw = self.kernel
        d = self.depth
        return (self.out_channels // 4, kh, kw, (self.in_channels + d - 1) // d, 4, d)

    @property
    def total(self) -> int:
        return int(np.prod(self.shape))

    @property
    def chunk(self) -> int:
        return 16 * (8 // self.bits)

    @property
    def nbytes(self) -> int:
        return self.total * self.bits // 8

    def supported(self) -> bool:
        """Widths whose indices never straddle a byte and fit one 16-entry table."""
        return self.bits in (1, 2, 4) and self.total % self.chunk == 0

    @property
    def name(self) -> str:
        kh, kw = self.kernel
        return (f"{FAMILY}_o{self.out_channels}_c{self.in_channels}_k{kh}x{kw}"
                f"_b{self.bits}" + (f"_d{self.depth}" if self.depth != 4 else ""))

def conv_order(spec: DecodeSpec, w: np.ndarray) -> np.ndarray:
    """``w[O, C, kh, kw]`` (indices or int8 weights) in the order the conv reads,
    ``[O/4, kh, kw, C4/d, 4 (o), d (c)]``, padded channels 0 (the zero index / weight)."""
    o, c, d = spec.out_channels, spec.in_channels, spec.depth
    kh, kw = spec.kernel
    c4 = spec.shape[3] * d
    full = np.zeros((o, c4, kh, kw), w.dtype)
    full[:, :c] = w
    return full.reshape(o // 4, 4, c4 // d, d, kh, kw).transpose(0, 4, 5, 2, 1, 3).copy()

def reference(spec: DecodeSpec, indices: np.ndarray, q_codebook: np.ndarray) -> np.ndarray:
    """NumPy oracle of the kernel: the int8 weights ``q_codebook[indices]`` in the conv's
    order."""
    return conv_order(spec, np.asarray(q_codebook)[np.asarray(indices)])


def pack_for_decode(spec: DecodeSpec, indices: np.ndarray) -> np.ndarray:
    """The ``uint8[nbytes]`` operand of the decode kernel from ``indices[O, C, kh, kw]``."""
    lay = conv_order(spec, np.asarray(indices, np.uint8)).reshape(-1)
    per = 8 // spec.bits
    lay = lay.reshape(-1, per, 16).astype(np.uint16)  # [chunk, s, j]
    packed = np.zeros(lay.shape[::2], np.uint16)
    for sft in range(per):
        packed |= lay[:, sft, :] << (sft * spec.bits)
    return packed.astype(np.uint8).reshape(-1)

def compute(spec: DecodeSpec, lookup: str = "scalar") -> tvm.tirx.PrimFunc:
    """The PrimFunc ``(packed, q_codebook16, s_x) -> W`` (``W``: int8 in the conv's order).

    ``lookup="tbl"``: 16 weights per NEON ``tbl`` (aarch64 only); ``pshufb``: the same with
    x86's SSSE3 ``pshufb``; ``scalar``: one table load per weight, any target. ``s_x`` is not
    read: it makes the call depend on the input, so that Relax's FoldConstant does not decode
    the weight at compile time (that would ship it as int8, twice the size of 4-bit indices).
    """
    bits, per, chunk = spec.bits, 8 // spec.bits, spec.chunk
    nchunks, mask = spec.total // chunk, (1 << bits) - 1
    shape = tuple(T.int64(v) for v in spec.shape)
    total, nbytes = T.int64(spec.total), T.int64(spec.nbytes)

    if lookup in ("tbl", "pshufb"):
        # One 16-byte table lookup of 16 indices: NEON tbl, or x86 SSSE3 pshufb (the same for
        # indices below 16; both are one instruction).
        intrin = {"tbl": "llvm.aarch64.neon.tbl1", "pshufb": "llvm.x86.ssse3.pshuf.b.128"}[
            lookup]

        @T.prim_func(private=True)
        def func(p: T.handle, q: T.handle, sx: T.handle, w: T.handle):
            T.func_attr({"tirx.noalias": True})
            P = T.match_buffer(p, (nbytes,), "uint8")
            Q = T.match_buffer(q, (T.int64(16),), "int8")
            SX = T.match_buffer(sx, (T.int64(1),), "float32")  # noqa: F841 (see docstring)
            W = T.match_buffer(w, shape, "int8")
            Wf = T.decl_buffer((total,), "int8", data=W.data)
            # (Expressions inline: a name bound here would become a buffer allocated per
            # iteration.)
            for i in T.parallel(T.int64(nchunks)):
                for s in T.unroll(per):
                    Wf[T.ramp(i * chunk + s * 16, 1, 16)] = T.call_llvm_pure_intrin(
                        "int8x16", intrin, Q[T.ramp(T.int64(0), 1, 16)],
                        T.reinterpret("int8x16", T.bitwise_and(
                            T.shift_right(P[T.ramp(i * 16, 1, 16)],
                                          T.Broadcast(T.uint8(s * bits), 16)),
                            T.Broadcast(T.uint8(mask), 16))))
    else:
        @T.prim_func(private=True)
        def func(p: T.handle, q: T.handle, sx: T.handle, w: T.handle):
            T.func_attr({"tirx.noalias": True})
            P = T.match_buffer(p, (nbytes,), "uint8")
            Q = T.match_buffer(q, (T.int64(16),), "int8")
            SX = T.match_buffer(sx, (T.int64(1),), "float32")  # noqa: F841 (see docstring)
            W = T.match_buffer(w, shape, "int8")
            Wf = T.decl_buffer((total,), "int8", data=W.data)
            for i in T.parallel(T.int64(nchunks)):
                for s, j in T.grid(per, 16):
                    Wf[i * chunk + s * 16 + j] = Q[T.Cast("int32", T.bitwise_and(
                        T.shift_right(P[i * 16 + j], T.uint8(s * bits)), T.uint8(mask)))]
    return func.with_attrs({
        KERNEL_ATTR: FAMILY,
        SPEC_ATTR: spec.to_json(),
        "op_pattern": OPAQUE,
    })

def schedule(func: tvm.tirx.PrimFunc, knobs: dict) -> tvm.tirx.PrimFunc:
    """The decode is written as loops, not blocks: its schedule picks the lookup."""
    return compute(DecodeSpec.from_func(func), knobs.get("lookup", "scalar"))


#: Written as loops (no blocks for MetaSchedule); its lookup instruction follows from the core
#: (:func:`dgms_tvm.schedules.capability_knobs`), so no knobs.
KERNEL = KernelFamily(FAMILY, DecodeSpec, compute, schedule, reference, operand=True)
