"""Target profiles: every CPU the project compiles for, as data.

One registry, :data:`PROFILES`, maps a name to a :class:`TargetProfile`; CLI choices, tuning
databases and tracker keys are keyed by these names. What a core can do (``dotprod``,
``vnni``, ...) is a property of its profile: :data:`CAPABILITIES` is the only table of CPU
features by name.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil

from .errors import UserError

AARCH64_TRIPLE = "aarch64-linux-gnu"
AARCH64_CXX = "aarch64-linux-gnu-g++"
AARCH64_CXX_PACKAGE = "g++-aarch64-linux-gnu"


@dataclasses.dataclass(frozen=True)
class TargetProfile:
    """A compilation target.

    Attributes
    ----------
    name : str
        Registry key (CLI choices, tuning_logs/<name>/, tracker keys).
    description : str
        One line for people (board examples).
    triple, mcpu : str
        LLVM target triple and CPU.
    mattr : tuple of str
        LLVM feature flags (``+neon``, ``+dotprod``, ...).
    num_cores : int
        Cores the generated code may use (MetaSchedule also needs it).
    qemu_cpu : str or None
        The ``QEMU_CPU`` model that emulates this core, for the emulated device.
    schedule : str
        Its hand-schedule knob file, ``schedules/<schedule>.json`` (one per core class).
    """

    name: str
    description: str
    triple: str
    mcpu: str
    mattr: tuple[str, ...]
    num_cores: int
    qemu_cpu: str | None = None
    schedule: str = "aarch64"

    @property
    def is_arm(self) -> bool:
        return self.triple.startswith("aarch64")

    @property
    def is_x86(self) -> bool:
        return self.triple.startswith("x86")

    # -- capabilities: what the core can do, asked by every kernel and the strategy ----------
    def has(self, capability: str) -> bool:
        """Whether the core has ``capability`` (a key of :data:`CAPABILITIES`): for an ARM
        profile what its ``mcpu`` / ``mattr`` give LLVM, for the host what it really has."""
        if capability not in CAPABILITIES:
            raise KeyError(f"unknown capability {capability!r} (known: {', '.join(CAPABILITIES)})")
        return capability in _capabilities(self.triple, self.mcpu, self.mattr)

    @property
    def capabilities(self) -> tuple[str, ...]:
        """Every capability the core has, in :data:`CAPABILITIES` order."""
        return tuple(c for c in CAPABILITIES if self.has(c))

    @property
    def neon(self) -> bool:
        """AArch64 Advanced SIMD (every Cortex-A here): ``tbl`` lookups, ``sadalp``."""
        return self.has("neon")

    @property
    def dotprod(self) -> bool:
        """ARMv8.2 ``sdot``: 16 int8 multiply-adds per instruction."""
        return self.has("dotprod")

    @property
    def i8mm(self) -> bool:
        """ARMv8.6 ``smmla``: an int8 2x8 by 8x2 matrix product per instruction."""
        return self.has("i8mm")

    @property
    def sve(self) -> bool:
        return self.has("sve")

    @property
    def fp16(self) -> bool:
        """Half-precision arithmetic (``+fullfp16``)."""
        return self.has("fp16")

    @property
    def ssse3(self) -> bool:
        """x86 ``pshufb``: 16 one-byte table lookups per instruction."""
        return self.has("ssse3")

    @property
    def avx2(self) -> bool:
        return self.has("avx2")

    @property
    def avx512(self) -> bool:
        """AVX-512 F (``vpermps`` over 16 lanes, 512-bit FMAs)."""
        return self.has("avx512")

    @property
    def vnni(self) -> bool:
        """AVX-512 VNNI with BW: ``vpdpbusd``, 64 u8 x s8 multiply-adds per instruction."""
        return self.has("vnni")


    def tvm_target(self):
        """The ``tvm.target.Target``.

        No separate host: on a CPU target the VM's host-side code (shape functions, packed
        calls) runs on the same core, so it must be compiled for the same triple.
        """
        from tvm.target import Target

        spec = {"kind": "llvm", "mtriple": self.triple, "mcpu": self.mcpu,
                "num-cores": self.num_cores}
        if self.mattr:
            spec["mattr"] = list(self.mattr)
        return Target(spec)

    def cross_compiler(self):
        """``fcompile`` for ``export_library``: None for host builds, the aarch64 g++ otherwise.

        Raises
        ------
        UserError
            When the cross compiler is not installed (names the Debian package).
        """
        if not self.is_arm:
            return None
        if shutil.which(AARCH64_CXX) is None:
            raise UserError(
                f"cross compiler {AARCH64_CXX} not found: install the Debian package "
                f"{AARCH64_CXX_PACKAGE} (apt-get install {AARCH64_CXX_PACKAGE}) or run "
                "scripts/setup.sh"
            )
        from tvm.support import cc

        return cc.cross_compiler(AARCH64_CXX, options=["-O2"])


@functools.cache
def _host_cpu() -> str:
    """LLVM's name for this machine's CPU (LLVM 22 ignores ``-mcpu=native``)."""
    import tvm

    get = tvm.get_global_func("target.llvm_get_system_cpu", allow_missing=True)
    name = get() if get is not None else ""
    return name or "generic"


@functools.cache
def _host_disabled() -> tuple[str, ...]:
    """``-feature`` for each feature the host's CPU model implies but this host lacks.

    A virtual machine may report a CPU model (``znver4``) while hiding some of its features
    (AVX-512): code for the model alone would then stop on an illegal instruction. LLVM's
    host feature detection reads what the CPU really offers."""
    import tvm
    from tvm.target import Target

    get = tvm.get_global_func("tvm.codegen.llvm.GetHostCPUFeatures", allow_missing=True)
    implied = tvm.get_global_func("target.llvm_get_cpu_features", allow_missing=True)
    if get is None or implied is None:
        return ()
    host = {str(k): bool(v) for k, v in dict(get()).items()}
    model = Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": _host_cpu()})
    return tuple(f"-{f}" for f in sorted(str(k) for k in dict(implied(model)))
                 if f in host and not host[f])


def _host_profile() -> TargetProfile:
    off = _host_disabled()
    names = (["AVX-512"] if any(f.startswith("-avx512") for f in off) else []) + [
        f[1:] for f in off if not f.startswith("-avx512")]
    hidden = f" without {', '.join(names)}" if names else ""
    return TargetProfile(
        name="x86",
        description=f"this host ({_host_cpu()}{hidden}, {os.cpu_count()} cores)",
        triple="x86_64-linux-gnu",
        mcpu=_host_cpu(),
        mattr=off,
        num_cores=os.cpu_count() or 1,
        schedule="x86",
    )


_ARM = [
    TargetProfile("cortex-a53", "Cortex-A53 (Raspberry Pi 3, ARMv8.0, in-order)",
                  AARCH64_TRIPLE, "cortex-a53", ("+neon",), 4, "cortex-a53", "cortex-a53"),
    TargetProfile("cortex-a55", "Cortex-A55 (little core of most phones, ARMv8.2 + dotprod)",
                  AARCH64_TRIPLE, "cortex-a55", ("+neon", "+v8.2a", "+dotprod"), 4,
                  "cortex-a55"),
    TargetProfile("cortex-a72", "Cortex-A72 (Raspberry Pi 4, RK3399 big core, ARMv8.0)",
                  AARCH64_TRIPLE, "cortex-a72", ("+neon",), 4, "cortex-a72"),
    TargetProfile("cortex-a76", "Cortex-A76 (Raspberry Pi 5, ARMv8.2 + dotprod)",
                  AARCH64_TRIPLE, "cortex-a76", ("+neon", "+v8.2a", "+dotprod"), 4,
                  "cortex-a76"),
    TargetProfile("neoverse-n1", "Neoverse-N1 (server sibling of Cortex-A76, + dotprod)",
                  AARCH64_TRIPLE, "neoverse-n1", ("+neon", "+v8.2a", "+dotprod"), 4,
                  "neoverse-n1"),
    # QEMU 7.2 has no Neoverse-N2: its ``max`` CPU runs i8mm, with SVE at the N2's 128 bits
    # and without SME (which max has, the N2 not: onnxruntime's FP32 would run it)
    TargetProfile("neoverse-n2", "Neoverse-N2 (Armv9-A server core: + i8mm, bf16, SVE2)",
                  AARCH64_TRIPLE, "neoverse-n2",
                  ("+neon", "+v9a", "+dotprod", "+i8mm", "+bf16", "+sve2"), 4,
                  "max,sme=off,sve-default-vector-length=16"),
]

#: Name -> profile. ``x86`` is resolved lazily (it asks LLVM for the host CPU).
PROFILES: dict[str, TargetProfile | None] = {"x86": None, **{p.name: p for p in _ARM}}

#: Short names for common choices. ``arm`` is the Cortex-A72: ARMv8.0 code runs on every
#: 64-bit Cortex-A, and it is the core of the most common board (Raspberry Pi 4).
ALIASES = {"arm": "cortex-a72", "host": "x86"}


def names() -> list[str]:
    """Every accepted target name, aliases included."""
    return [*PROFILES, *ALIASES]


def get_profile(name: str) -> TargetProfile:
    """Look up a target profile by name or alias.

    Raises
    ------
    UserError
        For an unknown name, listing the known ones.
    """
    key = ALIASES.get(name, name)
    if key not in PROFILES:
        raise UserError(f"unknown target {name!r}; known targets: {', '.join(names())}")
    if key == "x86":
        return _host_profile()
    return PROFILES[key]


#: Capability -> the LLVM target features it needs. The one table of CPU features by name:
#: kernels and strategies ask a profile (``profile.vnni``), never LLVM or a feature string.
CAPABILITIES: dict[str, tuple[str, ...]] = {
    "neon": ("neon",),
    "dotprod": ("dotprod",),
    "i8mm": ("i8mm",),
    "sve": ("sve",),
    "fp16": ("fullfp16",),
    "ssse3": ("ssse3",),
    "avx2": ("avx2",),
    "avx512": ("avx512f",),
    "vnni": ("avx512bw", "avx512vnni"),
}

#: The capabilities an aarch64 core may have.
AARCH64_CAPABILITIES = ("neon", "dotprod", "i8mm", "sve", "fp16")


#: Extensions no kernel asks for, which the code around them uses (libc's atomics, CRC; LLVM
#: may vectorise with SVE2 on a core that has it).
AARCH64_ASM_ONLY = ("lse", "rcpc", "crc", "sve2", "bf16")


def aarch64_mattr() -> str:
    """An LLVM ``-mattr`` with every aarch64 capability and :data:`AARCH64_ASM_ONLY`: for
    tools that must read any code a device runs (llvm-mca weighing executed blocks,
    whatever the core)."""
    return ",".join([*(f"+{f}" for c in AARCH64_CAPABILITIES for f in CAPABILITIES[c]),
                     *(f"+{f}" for f in AARCH64_ASM_ONLY)])


@functools.cache
def _capabilities(triple: str, mcpu: str, mattr: tuple[str, ...]) -> frozenset[str]:
    from tvm.target import Target, codegen

    spec = {"kind": "llvm", "mtriple": triple, "mcpu": mcpu}
    if mattr:
        spec["mattr"] = list(mattr)
    target = Target(spec)
    arch = "aarch64" if triple.startswith("aarch64") else "x86"
    own = {"neon", "dotprod", "i8mm", "sve", "fp16"} if arch == "aarch64" else \
        {"ssse3", "avx2", "avx512", "vnni"}
    return frozenset(c for c, feats in CAPABILITIES.items() if c in own and all(
        codegen.target_has_features(f, target) for f in feats))


def host_has(capability: str) -> bool:
    """Whether this host (the ``x86`` profile) has ``capability`` (see :data:`CAPABILITIES`)."""
    return get_profile("x86").has(capability)
