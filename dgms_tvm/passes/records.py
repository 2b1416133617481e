"""What the codebook lowering is told (policy) and what it reports (one record per layer)."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..format import SUPPORTED_BITS


@dataclasses.dataclass
class LayerRecord:
    """One conv2d / dense layer the lowering looked at.

    ``kernel`` is set when the layer was lowered to a codebook kernel; otherwise ``reason``
    says why it stayed FP32, and ``fp32_kernel`` names the float32 kernel it runs through
    (None: left to TVM's own lowering).
    """

    name: str
    op: str
    shape: tuple[int, ...]
    bits: int | None = None
    codebook_entries: int | None = None
    sparsity: float | None = None
    scaled: bool = False
    kernel: str | None = None
    fp32_kernel: str | None = None
    packed_bytes: int | None = None  # storage of the lowered form (CodebookWeight.nbytes)
    # "exact" or "int8" for a lowered layer; "int8" too for a conv that is no codebook but runs
    # the int8 kernel with its weight quantized per channel (in an int8 build: the stem)
    strategy: str | None = None
    # ops after the layer done by its kernel as it writes its outputs ("batch_norm+add+relu")
    epilogue: str = ""
    # input channels / features whose weights are all zero, dropped at compile time (zero
    # skipping: the kernel reduces over the rest)
    zero_inputs: int = 0
    # set where the layer is packed wider than its values need (no layout of that width)
    widened: str = ""
    # multiply-adds per inference (its own, from its shape: what the share of a build's
    # arithmetic on each kind of kernel is counted in)
    macs: int = 0
    # how it writes its outputs where not float32 (int8 for the next int8 conv: int8_chain)
    output: str = ""
    reason: str = ""
    error: str = ""

    @property
    def lowered(self) -> bool:
        return self.kernel is not None

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["shape"] = [int(v) for v in self.shape]
        d["lowered"] = self.lowered
        return d


@dataclasses.dataclass
class LoweringPolicy:
    """Inputs of the codebook lowering.

    Attributes
    ----------
    weights : dict
        Relax parameter name -> constant weight value.
    bits : int or None
        Widest codebook accepted (None: any supported width). Layers found from their values
        alone that need more are left FP32; layers that metadata declares quantized must fit
        (it "forces" the width on them).
    declared : dict
        Layer name -> bits, for layers that metadata declares quantized: a layer that is not a
        codebook of that width (or of ``bits``, if narrower) is an error, not a skip.
    names : dict
        Relax parameter name -> the layer's own name (``layer1.0.conv1.weight``).
    codebooks : bool
        False for the FP32 baseline: no layer becomes a codebook kernel.
    fp32_kernels : bool
        Run layers that stay FP32 through the same kernels and schedules with their float32
        weight (True), or leave them to TVM's default lowering (False).
    strategy : str
        ``exact`` (float32 activations, weights decoded to float32) or ``int8`` (activations
        quantized per tensor at run time, int8 codebook, int32 sums: ``kernels.int8.sdot``) for
        every codebook conv2d that the int8 kernel takes; the rest stay exact, and the record
        says why. With ``int8``, a conv2d that is no codebook (the stem) runs the int8 kernel
        too, its float32 weight quantized per output channel (as int8 deployments and
        onnxruntime's static int8 model do); not in the FP32 baseline (``codebooks=False``).
        Batch-1 codebook dense layers take it too where the GEMV kernel runs (``profile``).
        ``lut``: batch-1 codebook dense layers run the activation lookup-table GEMV
        (``kernels.gemv``, FP32 arithmetic); convs stay exact. With ``exact`` (and ``int8``
        where its GEMV does not run) such a layer takes the lut kernel where the exact GEMV's
        AVX-512 is missing: x86 with AVX2, and aarch64 (its ``tbl`` form).
    epilogues : bool
        Run the epilogue pass (:mod:`.epilogue`) after the lowering: the int8 and depthwise
        convs do the BatchNorm / bias, residual add and relu / relu6 after them as they write
        their outputs (True), or leave those ops to TVM (False).
    profile : dgms_tvm.targets.TargetProfile or None
        The build's target, for kernels that exist only where its core has their
        instructions (the x86 AVX-512 GEMV of batch-1 dense layers, the int8 convs' forms);
        None: none of those.
    zero_skip : bool
        Drop the input channels (conv2d, groups 1) and features (2-D dense) of a codebook
        layer whose weights are all zero, where its cost model says it pays (any strategy;
        the record's ``zero_inputs`` says how many).
    """

    weights: dict[str, np.ndarray]
    bits: int | None = None
    declared: dict[str, int] = dataclasses.field(default_factory=dict)
    names: dict[str, str] = dataclasses.field(default_factory=dict)
    codebooks: bool = True
    fp32_kernels: bool = True
    strategy: str = "exact"
    profile: object = None
    zero_skip: bool = True
    epilogues: bool = True
    #: Layer name -> the strategy its conv takes instead of ``strategy`` (a choice by
    #: measurement: :mod:`dgms_tvm.choice`).
    layer_strategy: dict[str, str] = dataclasses.field(default_factory=dict)

    def display_name(self, param: str) -> str:
        return self.names.get(param, param)


def widened_note(records: list[LayerRecord]) -> str:
    """A warning line naming the lowered layers packed wider than their values need (a 5 to
    7-bit codebook has no layout of its own: it is stored at 8 bits), or ``""``."""
    wide = [r for r in records if r.lowered and r.widened]
    if not wide:
        return ""
    more = f" and {len(wide) - 1} more" if len(wide) > 1 else ""
    return (f"warning: {len(wide)} codebook layer(s) packed wider than their values need: "
            f"{wide[0].name} {wide[0].widened}{more} (widths with a layout: "
            f"{', '.join(map(str, SUPPORTED_BITS))})")
