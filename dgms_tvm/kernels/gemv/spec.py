"""The GEMV kernels' spec, what each arithmetic needs of the core, and its tile choice."""

from __future__ import annotations

import dataclasses

from ..common import KERNEL_ATTR, OPAQUE, SPEC_ATTR
from ..protocol import Spec

FAMILY = "cb_gemv"

ARITHS = ("exact", "int8", "fp32", "lut")

#: Weights per packed chunk, by arithmetic (lut: one group; see :func:`lut_group`).
CHUNK = {"exact": 32, "int8": 128, "fp32": 16, "lut": 1}

#: Other forms of an arithmetic (``GemvSpec.form``; "" is its main one).
FORMS = {"exact": ("",), "int8": ("", "avx2"), "fp32": ("",), "lut": ("", "tbl", "gather")}

def _lacks(spec: GemvSpec, profile) -> str:
    """The instructions of ``spec``'s arithmetic / form that ``profile``'s core lacks ('' if
    none; fp32 and the gather form are generic vector code: LLVM splits their 16 lanes into
    the target's registers, 4 NEON or 2 AVX2 ones)."""
    if spec.form:
        has = {"avx2": profile.avx2, "gather": True, "tbl": profile.neon}[spec.form]
        name = {"avx2": "AVX2", "tbl": "NEON"}.get(spec.form, "")
    else:
        has = {"exact": profile.avx512, "int8": profile.vnni, "fp32": True,
               "lut": profile.avx2}[spec.arith]
        name = {"exact": "AVX-512", "int8": "AVX-512 VNNI", "lut": "AVX2"}.get(spec.arith, "")
    return "" if has else name

#: Output features per vector of the lut kernel (one AVX2 register of float32).
LUT_LANES = 8

def lut_group(bits: int) -> int:
    """Weights per lookup of the lut arithmetic: as many as keep the table within 16 entries
    (two 8-entry permutes)."""
    return {1: 4, 2: 2}.get(bits, 1)

@dataclasses.dataclass(frozen=True)
class GemvSpec(Spec):
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
    missing = _lacks(spec, profile)
    if missing:
        return f"the target lacks {missing}"
    if spec.arith != "fp32" and spec.bits > 4:
        return f"{spec.bits}-bit indices (the lookup holds 16 entries)"
    if spec.arith in ("exact", "fp32") and spec.k % spec.chunk:
        return f"K={spec.k} is not a multiple of {spec.chunk}"
    if spec.n % spec.rows and spec.arith != "lut":
        return f"N={spec.n} is not a multiple of {spec.rows} rows"
    return ""

#: Rows per register tile, by arithmetic: int8 accumulators are one register per row and
#: each 128-byte ``Xq`` load then serves 8 rows; exact keeps 4 rows, 8 measuring no better
#: (docs/kernels.md).
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

def finish(func, spec: GemvSpec):
    return func.with_attrs({
        KERNEL_ATTR: FAMILY,
        SPEC_ATTR: spec.to_json(),
        "op_pattern": OPAQUE,
        "tirx.noalias": True,
    })
