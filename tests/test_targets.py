import pytest

from dgms_tvm import targets
from dgms_tvm.errors import UserError
from dgms_tvm.schedules import load_knobs


def test_every_profile_builds_a_tvm_target_and_has_schedules():
    for name in targets.PROFILES:
        p = targets.get_profile(name)
        t = p.tvm_target()
        assert str(t.kind) == "llvm" and int(t.attrs["num-cores"]) == p.num_cores
        knobs = load_knobs(name)
        assert set(knobs) == {"cb_conv2d", "dw_conv2d", "cb_dense", "cb_gemv", "q8_conv2d",
                              "q8l_conv2d", "q8_quant", "q8_decode", "q8_dw_conv2d",
                              "q8r_dw_conv2d", "q8_im2col", "q8t_conv2d", "q8m_conv2d",
                              "ops"}
        # the other ops' loops in parallel on the multi-threaded host only (the aarch64
        # proxy counts one thread)
        assert knobs["ops"].get("parallel", False) == p.is_x86
        # The int8 strategy's sdot schedule exactly where the core has dotprod; the widening
        # kernel's NEON pairwise add on every ARM core.
        assert (knobs["q8_conv2d"]["dot"] == "sdot") == p.dotprod
        # smmla exactly where the core has i8mm
        assert (knobs["q8m_conv2d"]["mmla"] == "smmla") == p.i8mm
        assert (knobs["q8l_conv2d"].get("pairwise") == "sadalp") == p.is_arm


@pytest.mark.parametrize("name,dotprod", [("cortex-a53", False), ("cortex-a55", True),
                                          ("cortex-a72", False), ("cortex-a76", True),
                                          ("neoverse-n1", True), ("neoverse-n2", True)])
def test_arm_profiles(name, dotprod):
    p = targets.get_profile(name)
    assert p.is_arm and p.triple == "aarch64-linux-gnu" and "+neon" in p.mattr
    assert p.dotprod == dotprod
    assert bool(p.tvm_target().attrs["feature.has_dotprod"]) == dotprod
    assert p.i8mm == (name == "neoverse-n2")
    # QEMU 7.2 has no Neoverse-N2: QEMU's max CPU, without SME, SVE at the N2's 128 bits
    assert p.qemu_cpu == (name if not p.i8mm else "max,sme=off,sve-default-vector-length=16")


def test_x86_detects_host_cpu_and_arm_alias():
    x86 = targets.get_profile("x86")
    assert not x86.is_arm and x86.mcpu not in ("", "native")
    assert x86.cross_compiler() is None
    assert targets.get_profile("arm") == targets.get_profile("cortex-a72")


def test_unknown_target_lists_known_ones():
    with pytest.raises(UserError) as err:
        targets.get_profile("cortex-a999")
    msg = str(err.value)
    assert "\n" not in msg and all(n in msg for n in targets.names())


def test_capabilities_are_what_llvm_gives_each_core():
    from tvm.target import codegen

    n1, a72, a53 = (targets.get_profile(n) for n in ("neoverse-n1", "cortex-a72", "cortex-a53"))
    assert n1.capabilities == ("neon", "dotprod", "fp16")
    assert a72.capabilities == a53.capabilities == ("neon",)
    assert n1.dotprod and not a72.dotprod and not n1.i8mm and not n1.sve
    assert not any(p.avx2 or p.vnni or p.ssse3 for p in (n1, a72))
    host = targets.get_profile("x86")
    assert not host.neon and not host.dotprod
    target = host.tvm_target()
    for cap, features in targets.CAPABILITIES.items():
        if cap in ("ssse3", "avx2", "avx512", "vnni"):
            assert host.has(cap) == all(codegen.target_has_features(f, target)
                                        for f in features), cap
    with pytest.raises(KeyError):
        host.has("no-such-capability")


def test_host_profile_claims_only_features_the_host_has():
    """A VM may report a CPU model (znver4) and hide some of its features (AVX-512): the x86
    profile must not let LLVM use them (the kernels would stop on an illegal instruction)."""
    import tvm
    from tvm.target import codegen

    host = {str(k): bool(v) for k, v in
            dict(tvm.get_global_func("tvm.codegen.llvm.GetHostCPUFeatures")()).items()}
    target = targets.get_profile("x86").tvm_target()
    for f in ("avx2", "fma", "ssse3", "avx512f", "avx512bw", "avx512vnni", "avx512vl"):
        if f in host:
            assert bool(codegen.target_has_features(f, target)) == host[f], f
