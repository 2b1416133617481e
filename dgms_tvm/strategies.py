"""Strategies as data: what ``--strategy`` may ask for, what ``auto`` picks on a core, and per
layer kind the ordered kernel candidates each strategy tries.

A codebook layer takes the first candidate of its strategy whose kernel ``supports`` it on
the build's profile; the record of a layer that got a later one (or none) says why the
earlier ones could not take it. ``auto`` is resolved once per build, against the profile's
capabilities (:mod:`dgms_tvm.targets`), never against a schedule file.
"""

from __future__ import annotations

from .errors import UserError

#: ``--strategy`` values. ``exact``: float32 activations, weights decoded to float32.
#: ``int8``: activations quantized per tensor at run time, int8 codebook, int32 sums.
#: ``int8-full``: ``int8`` with 8-bit weights on the cores whose fastest int8 conv keeps 7
#: (the widening kernel of cortex-a53 / a72: less error, slower); elsewhere
#: ``int8``. ``lut``: activation lookup tables, FP32 arithmetic; it has a kernel for batch-1
#: dense layers only, its convs stay exact.
STRATEGIES = ("auto", "exact", "int8", "int8-full", "lut")

#: ``auto``: the first rule whose capability the core has. The int8 conv wins where the core
#: has a dot-product instruction (``sdot``: 16 multiply-adds per instruction against 4 for an
#: FP32 ``fmla``; x86 ``vpdpbusd``: 64 against 16 for an AVX-512 FMA), and on aarch64 cores
#: without one (the widening kernel, :mod:`.kernels.int8.widening`: 32 multiply-adds in 5
#: instructions and a quarter of the input bytes to load); elsewhere the generic int8
#: vector code has no such advantage.
AUTO = (
    ("dotprod", "int8"),
    ("vnni", "int8"),
    ("neon", "int8"),
    (None, "exact"),
)

#: Batch-1 dense layers: strategy -> the GEMV kernels (arithmetic, form) it tries in order
#: (:mod:`.kernels.gemv`); none that runs on the core: the generic dense kernel. The lut
#: kernel (FP32 arithmetic) stands in for ``exact`` where the exact GEMV's AVX-512 is
#: missing: AVX2 hosts and aarch64 (its ``tbl`` form).
GEMV = {
    "exact": (("exact", ""), ("lut", ""), ("lut", "tbl")),
    "int8": (("int8", ""), ("int8", "avx2"), ("exact", ""), ("lut", ""), ("lut", "tbl")),
    "lut": (("lut", ""), ("lut", "tbl"), ("lut", "gather")),
    "fp32": (("fp32", ""),),
}


#: Conv2d layers: strategy -> the kernel families it tries in order (``int8``: the int8 conv
#: of the core, :data:`INT8_CONV`; ``int8_sdot``: the sdot conv for the grouped convs the
#: smmla conv refuses, :data:`INT8_SDOT`; ``int8_im2col``: its form for convs of few input
#: channels where the core has one, :data:`INT8_IM2COL`; ``int8_dw``: the int8 depthwise
#: conv where the core has one, :data:`INT8_DW`). The first whose ``supports`` takes the
#: layer wins; an int8 layer that lands on a later (exact) one keeps the int8 conv's reason
#: in its record. ``lut`` has no conv kernel: its convs are exact.
CONV2D = {
    "exact": ("dw_conv2d", "cb_conv2d"),
    "lut": ("dw_conv2d", "cb_conv2d"),
    "int8": ("int8_lut", "int8", "int8_im2col", "int8_sdot", "int8_dw", "dw_conv2d",
             "cb_conv2d"),
    "int8-full": ("int8", "int8_im2col", "int8_sdot", "int8_dw", "dw_conv2d", "cb_conv2d"),
    # int8 without the lookup-table conv: what ``compile --choose`` measures it against
    # per layer (dgms_tvm.choice); no --strategy value
    "int8-widening": ("int8", "int8_im2col", "int8_sdot", "int8_dw", "dw_conv2d",
                      "cb_conv2d"),
}

#: The int8 conv of a core: the first rule whose capability it has. i8mm cores take the
#: ``smmla`` conv (32 multiply-adds per instruction, :mod:`.kernels.int8.smmla`); aarch64
#: cores without ``sdot`` the widening kernel (the generic int8 conv is slower than FP32
#: there: docs/kernels.md); ``sdot`` and x86 VNNI cores the 4x4x4 micro-kernel, others its
#: generic vector form.
INT8_CONV = (
    ("i8mm", "q8m_conv2d"),
    ("dotprod", "q8_conv2d"),
    ("neon", "q8l_conv2d"),
    (None, "q8_conv2d"),
)


#: The sdot conv where the core's int8 conv is the smmla conv and refuses a layer: groups of
#: 4 input channels (ResNeXt's), which ``smmla``'s 8-channel reads would pad to 8.
INT8_SDOT = (
    ("i8mm", "q8_conv2d"),
    (None, ""),
)


#: The lookup-table int8 conv of 1- and 2-bit codebook layers (:mod:`.kernels.int8.lut`): on
#: aarch64 cores without ``sdot``, where one ``tbl`` + ``sadalp`` make 32 (2-bit) or 64
#: (1-bit) multiply-adds against the widening conv's 32 in 5 instructions. With ``sdot``
#: (16 in one) it would gain little.
INT8_LUT = (
    ("dotprod", ""),
    ("neon", "q8t_conv2d"),
    (None, ""),
)


#: The int8 conv of few input channels (the 3-channel stem), where the core's int8 conv
#: would pad them: on aarch64 cores without ``sdot``, the window's taps gathered into the
#: 16-channel groups of the widening kernel's 1x1 conv (:mod:`.kernels.int8.gathered`), on
#: i8mm cores into the 8-channel groups of the smmla conv's. The sdot conv pads 3 channels
#: to 4 only, and x86 VNNI's to 4 as well: they take the stem themselves.
INT8_IM2COL = (
    ("i8mm", "q8_im2col"),
    ("dotprod", ""),
    ("neon", "q8_im2col"),
    (None, ""),
)


#: The int8 depthwise conv: on the cores whose int8 conv writes its input int8 (the sdot
#: conv, the widening conv of the other aarch64 cores, x86 VNNI's rows form; int8 between
#: layers: :mod:`.passes.int8_chain`): ``smull`` / ``smlal`` on aarch64, ``vpdpbusd`` over
#: 4 taps per lane on x86 (:mod:`.kernels.int8.depthwise_rows`). Elsewhere a run-time quantize in
#: front of it would cost about what it saves, and depthwise convs stay FP32.
INT8_DW = (
    ("neon", "q8_dw_conv2d"),
    ("vnni", "q8r_dw_conv2d"),
    (None, ""),
)


#: Whether the int8 conv keeps its weight decoded (int8, tiled in the conv's order at compile
#: time) instead of decoding the packed indices on each call: on x86 VNNI hosts, whose memory
#: holds 8 bits a weight (2x a 4-bit layer's packed indices, 4x a 2-bit one's) and where
#: the decode kernels cost a call each per inference (docs/log.md); on the aarch64
#: boards the packed indices stay the model's form in memory.
KEEP_INT8_WEIGHTS = (
    ("vnni", True),
    (None, False),
)


def for_core(table: tuple, profile):
    """The value of the first rule of ``table`` (``(capability, value)`` pairs, the last for
    every core) whose capability ``profile``'s core has; without a profile, the last rule's."""
    if profile is None:
        return table[-1][1]
    return next(v for cap, v in table if cap is None or profile.has(cap))


def conv2d_candidates(strategy: str, profile) -> tuple[str, ...]:
    """The kernel families a codebook conv2d tries under ``strategy`` on ``profile``."""
    fams = CONV2D[strategy if strategy in CONV2D else "exact"]
    resolved = {"int8": for_core(INT8_CONV, profile), "int8_lut": for_core(INT8_LUT, profile),
                "int8_sdot": for_core(INT8_SDOT, profile),
                "int8_im2col": for_core(INT8_IM2COL, profile),
                "int8_dw": for_core(INT8_DW, profile)}
    return tuple(f for f in (resolved.get(f, f) for f in fams) if f)


def check(requested: str) -> None:
    """Refuse a value that is no strategy (one line, listing the choices)."""
    if requested not in STRATEGIES:
        raise UserError(f"unknown strategy {requested!r} (choose from {', '.join(STRATEGIES)})")


def resolve(requested: str, profile) -> str:
    """The strategy a build for ``profile`` uses for ``requested`` (``auto``: by :data:`AUTO`).
    Layers the int8 kernels cannot take stay exact either way; the manifest says per layer
    what it got."""
    check(requested)
    if requested != "auto":
        return requested
    return for_core(AUTO, profile)


def is_int8(strategy: str) -> bool:
    return strategy in ("int8", "int8-full", "int8-widening")


def gemv_candidates(strategy: str, codebook: bool) -> tuple[tuple[str, str], ...]:
    """The GEMV kernels a batch-1 dense layer tries under ``strategy`` (a layer that is no
    codebook: the FP32 GEMV)."""
    if not codebook:
        return GEMV["fp32"]
    return GEMV["int8" if is_int8(strategy) else strategy if strategy in GEMV else "exact"]
