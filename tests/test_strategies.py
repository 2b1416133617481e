"""Strategies as data: what ``auto`` picks on each core (from its capabilities, never from a
schedule file), and the GEMV candidates each strategy tries in order."""

import pytest

from dgms_tvm import strategies, targets
from dgms_tvm.errors import UserError


class _Core:
    """A profile with the capabilities given (what ``auto`` reads of a profile)."""

    def __init__(self, *caps):
        self.caps = set(caps)

    def has(self, cap):
        return cap in self.caps


@pytest.mark.parametrize("caps,want", [
    (("neon", "dotprod"), "int8"),  # sdot
    (("neon",), "int8"),  # the widening kernel
    (("avx2", "avx512", "vnni"), "int8"),  # vpdpbusd
    (("avx2", "avx512"), "exact"),  # AVX-512 without VNNI: the int8 kernel has no edge
    (("avx2",), "exact"),
    ((), "exact"),
])
def test_auto_follows_the_capabilities(caps, want):
    assert strategies.resolve("auto", _Core(*caps)) == want


def test_every_profile_resolves_and_asked_strategies_stay():
    for name in targets.PROFILES:
        p = targets.get_profile(name)
        assert strategies.resolve("auto", p) == ("int8" if p.is_arm or p.vnni else "exact")
        for s in strategies.STRATEGIES[1:]:
            assert strategies.resolve(s, p) == s


def test_an_unknown_strategy_is_one_line():
    with pytest.raises(UserError, match=r"^unknown strategy 'fast' \(choose from auto, exact"):
        strategies.check("fast")


def test_gemv_candidates():
    assert strategies.gemv_candidates("int8-full", True) == strategies.GEMV["int8"]
    assert strategies.gemv_candidates("exact", False) == (("fp32", ""),)
    assert strategies.gemv_candidates("lut", True)[0] == ("lut", "")
    # the lut kernel stands in for exact where the exact GEMV's AVX-512 is missing
    assert ("lut", "tbl") in strategies.gemv_candidates("exact", True)


@pytest.mark.parametrize("caps,family,kept,gather", [
    (("neon", "dotprod"), "q8_dw_conv2d", False, ""),  # sdot pads 3 channels to 4 only
    (("neon",), "q8_dw_conv2d", False, "q8_im2col"),  # the widening conv would pad to 16
    (("avx2", "avx512", "vnni"), "q8r_dw_conv2d", True, ""),  # vpdpbusd over 4 taps a lane
    (("avx2", "avx512"), "", False, ""),  # no int8 conv writes its input: FP32 depthwise
    ((), "", False, ""),
])
def test_int8_depthwise_gather_and_kept_weights_follow_the_capabilities(caps, family, kept,
                                                                        gather):
    assert strategies.for_core(strategies.INT8_DW, _Core(*caps)) == family
    assert strategies.for_core(strategies.KEEP_INT8_WEIGHTS, _Core(*caps)) == kept
    assert not strategies.for_core(strategies.KEEP_INT8_WEIGHTS, None)
    assert strategies.for_core(strategies.INT8_IM2COL, _Core(*caps)) == gather
    want = ("q8t_conv2d", "q8l_conv2d", gather) if gather else ()  # (the lookup tables first)
    assert strategies.conv2d_candidates("int8", _Core(*caps))[:len(want)] == want
    lut = "q8t_conv2d" if gather else ""
    assert strategies.for_core(strategies.INT8_LUT, _Core(*caps)) == lut


def test_every_capability_table_ends_with_the_rule_for_every_core():
    # (for_core reads the last rule for a build without a profile, and no core falls through)
    tables = (strategies.AUTO, strategies.INT8_CONV, strategies.INT8_LUT, strategies.INT8_SDOT,
              strategies.INT8_IM2COL, strategies.INT8_DW, strategies.KEEP_INT8_WEIGHTS)
    for table in tables:
        assert table[-1][0] is None and all(cap for cap, _ in table[:-1])
    assert strategies.for_core(strategies.INT8_CONV, None) == "q8_conv2d"
