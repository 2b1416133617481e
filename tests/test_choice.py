"""Per-layer choice by measurement (dgms_tvm.choice, ``compile --choose``): each conv's
kernels timed on this host in the int8 build and in the exact one, the faster taken per
layer, kept only where the whole model is faster too, and both figures in the manifest;
a target it cannot time here is one line of error."""

from pathlib import Path

import numpy as np
import pytest
import torch

from dgms_tvm import choice, compiler, frontend, pipeline
from dgms_tvm.commands import compile as compile_cli
from dgms_tvm.errors import UserError
from dgms_tvm.measure import devices, sites
from dgms_tvm.quant import hard_quantize
from dgms_tvm.targets import get_profile
from tests.passes.graphs import Block
from tests.test_cli import _cli

HOST = get_profile("x86")


def _block():
    torch.manual_seed(0)
    net = Block().eval()
    hard_quantize(net, 4)
    return frontend.from_torch(net, (torch.randn(1, 8, 12, 12),))


def test_a_layer_chosen_exact_is_lowered_exact_and_says_why():
    imported = _block()
    lowered = compiler.lower(imported, 4, strategy="int8", profile=HOST,
                             layer_strategy={"c3.weight": "exact"})
    recs = {r.name: r for r in lowered.records}
    assert recs["c3.weight"].strategy == "exact"
    assert recs["c3.weight"].reason == "exact: chosen by measurement"
    assert recs["c3.weight"].kernel.startswith("cb_conv2d_")
    assert all(recs[n].strategy == "int8" for n in ("c1.weight", "c2.weight", "c4.weight"))


def test_each_conv_is_timed_in_both_builds_and_the_faster_chosen():
    imported = _block()
    got = choice.by_time(compiler.lower(imported, 4, strategy="int8", profile=HOST),
                         compiler.lower(imported, 4, strategy="exact", profile=HOST), HOST,
                         "int8", repeat=3, number=5)
    assert set(got) == {"c1.weight", "c2.weight", "ds.weight", "c3.weight", "c4.weight"}
    for c in got.values():
        t = c["ms"]
        assert set(t) == {"int8", "exact"} and min(t.values()) > 0
        assert c["chosen"] == ("int8" if t["int8"] <= t["exact"] else "exact")
    # layers of one shape share a kernel: each still gets its own time
    assert choice.overrides(got, "int8") == {n: "exact" for n, c in got.items()
                                            if c["chosen"] == "exact"}


@pytest.mark.parametrize("kept", [True, False])
def test_the_build_keeps_the_choices_only_where_the_whole_model_is_faster(kept, monkeypatch):
    loaded = pipeline.load_model("digitnet", 4, 0)
    names = [r.name for r in compiler.lower(loaded.imported, 4, strategy="int8",
                                            profile=HOST).records if r.op == "conv2d"]
    fake = {n: {"chosen": "exact" if n == names[1] else "int8",
                "ms": {"int8": 1.0, "exact": 0.5 if n == names[1] else 2.0}} for n in names}
    monkeypatch.setattr(choice, "by_time", lambda *a, **k: fake)
    seen = {}

    def confirm(chosen, plain, profile, x):
        seen["chosen"] = {r.name: r.strategy for r in chosen.records}
        return {"as chosen": 1.0, "plain": 2.0 if kept else 0.5, "kept": kept}

    monkeypatch.setattr(choice, "confirm", confirm)
    build = pipeline.build_model(loaded, HOST, 4, False, strategy="int8", choose=True)
    assert seen["chosen"][names[1]] == "exact"
    got = {r.name: r.strategy for r in build.lowered.records}
    assert got[names[1]] == ("exact" if kept else "int8")
    ch = build.manifest["choices"]
    assert ch["layers"] == fake and ch["model_ms"]["kept"] == kept
    table = pipeline.format_table(build.manifest)
    assert "1 layers exact" in table and ("kept" if kept else "not kept") in table
    out = compiler.run_local(build.executable, [loaded.example()])[0]
    assert np.isfinite(out).all()


def test_the_whole_model_is_timed_both_ways():
    imported = _block()
    a = compiler.lower(imported, 4, strategy="int8", profile=HOST,
                       layer_strategy={"c3.weight": "exact"})
    b = compiler.lower(imported, 4, strategy="int8", profile=HOST)
    got = choice.confirm(a, b, HOST, np.zeros((1, 8, 12, 12), np.float32), rounds=3, number=3)
    assert got["as chosen"] > 0 and got["plain"] > 0
    assert got["kept"] == (got["as chosen"] < got["plain"])


def test_choose_on_a_target_it_cannot_measure_is_one_line(tmp_path, capsys):
    with pytest.raises(UserError, match=r"not neoverse-n1 with int8"):
        choice.check(get_profile("neoverse-n1"), "int8")
    with pytest.raises(UserError, match=r"not cortex-a72 with int8-full"):
        choice.check(get_profile("cortex-a72"), "int8-full")
    choice.check(get_profile("cortex-a72"), "int8")  # the lookup-table conv or the widening
    code, err = _cli(compile_cli.main, ["--model", "digitnet", "--target", "neoverse-n1",
                                        "--choose", "--output", str(tmp_path / "a")], capsys)
    assert code == 2 and len(err) == 1 and "--choose measures each layer" in err[0]
    assert not (tmp_path / "a").exists()


def test_on_an_arm_core_each_conv_takes_the_kernel_of_fewer_estimated_cycles(monkeypatch):
    """cortex-a72: the lookup-table build against the widening one, per layer by the cycle
    estimate of its kernels (measure.devices.layers, faked here; run for real on the emulated
    core in tests/device): a layer that loses is lowered to the widening conv and says so."""
    torch.manual_seed(0)
    net = Block().eval()
    hard_quantize(net, 2)
    imported = frontend.from_torch(net, (torch.randn(1, 8, 12, 12),))
    a72 = get_profile("cortex-a72")
    assert choice.other(a72, "int8") == "int8-widening"
    lut = compiler.lower(imported, 2, strategy="int8", profile=a72)
    wide = compiler.lower(imported, 2, strategy="int8-widening", profile=a72)
    assert {r.kernel[:10] for r in wide.records if r.name in ("c2.weight", "c3.weight")} == {
        "q8l_conv2d"}
    # (the 1x1 convs read a table too few times: the lookup-table build gives them the
    # widening conv too; --choose moves a layer away from the tables, never onto them)

    calls = []

    def rows(prepared, *args):  # one row per layer, the conv's row first: its cycles
        calls.append(prepared)
        other = 2.5 if len(calls) == 1 else 2.0  # one code, two libraries: estimates differ
        out = []
        for kernels in sites.group_sites(compiler.call_sites(prepared)):
            layer = sites.group_layer(compiler.site_layers(prepared), kernels)
            lut = kernels[-1].startswith("q8t")
            out.append({"kernels": " + ".join(kernels), "minstr": 1.0,
                        "mcycles": 3.0 if lut else other,
                        "key": layer if isinstance(layer, tuple) else None})
        return out

    monkeypatch.setattr(devices, "layers", rows)
    got = choice.by_cycles(lut, wide, a72, "int8", None, "cortex-a72", Path("unused"))
    assert got["c2.weight"]["chosen"] == "int8-widening"
    assert got["c2.weight"]["mcycles"]["int8-widening"] == 2.0
    assert got["c3.weight"]["chosen"] == "int8"  # the same kernel in both builds
    assert got["c3.weight"]["mcycles"]["int8-widening"] < got["c3.weight"]["mcycles"]["int8"]
    picked = choice.overrides(got, "int8")
    assert picked == {"c2.weight": "int8-widening"}
    lowered = compiler.lower(imported, 2, strategy="int8", profile=a72, layer_strategy=picked)
    recs = {r.name: r for r in lowered.records}
    assert recs["c2.weight"].kernel.startswith("q8l_conv2d_")
    assert recs["c2.weight"].strategy == "int8"
    assert recs["c2.weight"].reason == "int8-widening: chosen by measurement"


def test_an_arm_build_with_no_conv_to_choose_for_measures_nothing(monkeypatch):
    """A 4-bit model on cortex-a72: no conv takes the lookup tables, so both builds run the
    same kernels; no device is started and the manifest has no choices."""
    loaded = pipeline.load_model("digitnet", 4, 0)
    monkeypatch.setattr(choice, "by_cycles", lambda *a, **k: pytest.fail("measured"))
    build = pipeline.build_model(loaded, get_profile("cortex-a72"), 4, False, choose=True)
    assert "choices" not in build.manifest
