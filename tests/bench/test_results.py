"""docs/results.md and the README's results table, made from kept bench reports
(bench/results.py, scripts/results.py)."""

import json
from pathlib import Path

import pytest

from dgms_tvm.bench import provenance, results
from dgms_tvm.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def _report(target="neoverse-n1", model="resnet18", **over):
    rows = [("FP32", 700.0, 300.0), ("DGMS 4-bit", 100.0, 50.0),
            ("onnxruntime FP32 (peer)", 650.0, 280.0),
            ("onnxruntime int8 U8S8 QDQ (peer)", 210.0, 90.0),
            ("onnxruntime int8 S8S8 QDQ (peer)", 200.0, 80.0)]
    rep = {"model": model, "bits": 4, "target": target, "cycle_model": target,
           "command": f"dgms-tvm bench --model {model} --target {target}",
           "commit": "abc1234", "date": "2026-12-07", "max_rel_err_vs_fp32": 0.01,
           "top1_agrees_with_fp32": True, "layers": [{"big": "per-layer rows"}],
           "rows": [{"label": lb, "minstr": i, "mcycles": c, "median_ms": 1.0, "hot": []}
                    for lb, i, c in rows]}
    rep.update(over)
    return rep


def test_a_summary_keeps_the_figures_and_where_they_came_from():
    s = results.summary(_report())
    assert s["command"].startswith("dgms-tvm bench") and s["commit"] == "abc1234"
    assert s["rows"][1] == {"label": "DGMS 4-bit", "minstr": 100.0, "mcycles": 50.0}
    assert "layers" not in s  # (the per-layer rows stay in the bench's own report)


@pytest.mark.parametrize("over,why", [
    ({"command": None}, "no command"), ({"commit": "abc1234+changes"}, "uncommitted"),
    ({"rows": [{"label": "FP32", "minstr": None, "mcycles": None}]}, "no instruction counts"),
])
def test_a_report_that_cannot_stand_as_a_current_figure_is_refused(over, why):
    with pytest.raises(UserError, match=why):
        results.summary(_report(**over))


def test_the_tables_hold_each_build_against_dgms_by_both_measures():
    s = [results.summary(_report()), results.summary(_report("cortex-a72", "mobilenetv2"))]
    text = results.render(results.ordered(s))
    # cores in the targets' order: cortex-a72 before neoverse-n1
    assert text.index("## cortex-a72") < text.index("## neoverse-n1")
    assert "| FP32 | 700.0 | 300.0 | 7.00x | 6.00x |" in text
    # the summary line: FP32, onnxruntime FP32 and the fastest int8 (by instructions) / DGMS
    line = next(ln for ln in text.splitlines() if ln.startswith("| neoverse-n1 | ResNet-18"))
    assert "| 100.0 / 50.0 | 7.00x / 6.00x | 6.50x / 5.60x | 2.00x / 1.60x (S8S8 QDQ) |" in line
    assert "dgms-tvm bench --model resnet18 --target neoverse-n1" in text


def test_add_keeps_one_summary_per_model_bits_and_core(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text(json.dumps(_report()))
    kept = tmp_path / "kept"
    assert results.add([out], kept) == [kept / "resnet18-w4-neoverse-n1.json"]
    (out / "report.json").write_text(json.dumps(_report(commit="def5678")))
    results.add([out], kept)
    assert [s["commit"] for s in results.load(kept)] == ["def5678"]
    with pytest.raises(UserError, match="cannot read the bench report"):
        results.add([tmp_path / "nowhere"], kept)


def test_write_updates_the_page_and_the_readme_block_and_check_finds_them_stale(tmp_path):
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "x.json").write_text(json.dumps(results.summary(_report())))
    page, readme = tmp_path / "results.md", tmp_path / "README.md"
    readme.write_text(f"# x\n\n{results.README_BEGIN}\nold\n{results.README_END}\n\nrest\n")
    assert results.write(kept, page, readme, check=True) == [page, readme]
    assert results.write(kept, page, readme) == [page, readme]
    assert results.write(kept, page, readme, check=True) == []
    assert "old" not in readme.read_text() and readme.read_text().endswith("\n\nrest\n")
    assert "| neoverse-n1 | ResNet-18 4-bit |" in readme.read_text()


def test_the_shipped_results_page_and_readme_table_are_what_the_kept_reports_give():
    stale = results.write(ROOT / "docs" / "results", ROOT / "docs" / "results.md",
                          ROOT / "README.md", check=True)
    assert not stale, f"run: python scripts/results.py ({stale} are stale)"
    kept = results.load(ROOT / "docs" / "results")
    # every core the emulated devices run, both zoo models on each
    assert {(s["target"], s["model"]) for s in kept} >= {
        (t, m) for t in ("cortex-a53", "cortex-a72", "neoverse-n1", "neoverse-n2")
        for m in ("resnet18", "mobilenetv2")}


def test_provenance_names_the_command_and_the_commit():
    rec = provenance.record("bench", ["--model", "resnet18", "--output", "out dir/"])
    assert rec["command"] == "dgms-tvm bench --model resnet18 --output 'out dir/'"
    assert rec["commit"] and len(rec["commit"].split("+")[0]) >= 7
