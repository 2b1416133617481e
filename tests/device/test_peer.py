"""The onnxruntime peer's view of the emulated core: the /proc/cpuinfo it reads names the
profile's features only (QEMU's max CPU, behind the neoverse-n2 profile, has more)."""

from dgms_tvm.device.peer import cpu_prefix
from dgms_tvm.targets import get_profile


def test_cpuinfo_names_the_profiles_features(tmp_path):
    def features(name):
        text = (cpu_prefix(get_profile(name), tmp_path) / "proc" / "cpuinfo").read_text()
        lines = [ln.split(":", 1)[1].split() for ln in text.splitlines()
                 if ln.startswith("Features")]
        assert len(lines) == get_profile(name).num_cores
        return set(lines[0]), text

    a72, _ = features("cortex-a72")
    n1, n1_text = features("neoverse-n1")
    n2, n2_text = features("neoverse-n2")
    assert "asimddp" not in a72 and "asimddp" in n1 and "i8mm" not in n1
    assert {"asimddp", "i8mm", "bf16", "sve2"} <= n2 and not any("sme" in f for f in n2)
    assert "CPU part\t: 0xd0c" in n1_text and "CPU part\t: 0xd49" in n2_text
