"""Per-layer choice by measurement (dgms_tvm.choice, ``compile --choose``): each conv's
kernels timed on this host in the int8 build and in the exact one, the faster taken per
layer, kept only where the whole model is faster too, and both figures in the manifest;
a target it cannot time here is one line of error."""

import numpy as np
import pytest
import torch

from dgms_tvm import choice, compiler, frontend, pipeline
from dgms_tvm.commands import compile as compile_cli
from dgms_tvm.errors import UserError
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


def test_choose_on_a_target_it_cannot_time_is_one_line(tmp_path, capsys):
    with pytest.raises(UserError, match=r"needs --target x86, not cortex-a72"):
        choice.check(get_profile("cortex-a72"))
    code, err = _cli(compile_cli.main, ["--model", "digitnet", "--target", "cortex-a72",
                                        "--choose", "--output", str(tmp_path / "a")], capsys)
    assert code == 2 and len(err) == 1 and "--choose times each layer" in err[0]
    assert not (tmp_path / "a").exists()
