"""``docs/results.md``: the current figures per core and model, made from the bench reports
kept in ``docs/results/`` (one summary of a ``dgms-tvm bench`` report per model, bits and
core, each with the command and commit that measured it), and the same summary table in
the README. ``scripts/results.py`` adds reports and writes both; nothing here measures.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..targets import names as target_names
from .ort_int8 import PEER_CONFIGS

#: The report fields a summary keeps (the rows keep their label and both measures).
KEPT = ("model", "bits", "target", "command", "commit", "date", "cycle_model",
        "max_rel_err_vs_fp32", "top1_agrees_with_fp32")
#: The README's block that :func:`write` keeps equal to the summary table.
README_BEGIN = "<!-- results: made by scripts/results.py from docs/results/ -->"
README_END = "<!-- end of results -->"
#: How the zoo's models are named in the tables.
TITLES = {"resnet18": "ResNet-18", "mobilenetv2": "MobileNetV2"}
PEER_FP32 = "onnxruntime FP32 (peer)"


def summary(report: dict) -> dict:
    """What the results keep of a bench report (``report.json``); refused where it cannot
    stand as a current figure: no instruction counts, no provenance."""
    missing = [k for k in ("command", "commit") if not report.get(k)]
    if missing:
        raise UserError(f"the report has no {' or '.join(missing)} (made by an older "
                        "bench): run the bench again")
    if "+changes" in report["commit"]:
        raise UserError(f"the report measured uncommitted code ({report['commit']}): commit, "
                        "then run the bench again")
    if report["rows"][0].get("minstr") is None:
        raise UserError("the report has no instruction counts (a board, or counting off)")
    out = {k: report.get(k) for k in KEPT}
    out["rows"] = [{k: r.get(k) for k in ("label", "minstr", "mcycles")}
                   for r in report["rows"]]
    return out


def file_name(s: dict) -> str:
    return f"{Path(str(s['model'])).stem}-w{s['bits']}-{s['target']}.json"


def add(reports: list[Path], folder: Path) -> list[Path]:
    """Keep the summary of each bench output folder's ``report.json`` in ``folder`` (one
    per model, bits and core: a newer run of the same replaces it)."""
    written = []
    for path in reports:
        path = Path(path)
        src = path / "report.json" if path.is_dir() else path
        try:
            report = json.loads(src.read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read the bench report {src}: {err}") from None
        s = summary(report)
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / file_name(s)
        dest.write_text(json.dumps(s, indent=1) + "\n")
        written.append(dest)
    return written


def ordered(summaries: list[dict]) -> list[dict]:
    """Cores in the targets' order, then model and bits (most first)."""
    order = {n: i for i, n in enumerate(target_names())}
    return sorted(summaries, key=lambda s: (order.get(s["target"], len(order)),
                                            str(s["model"]), -s["bits"]))


def load(folder: Path) -> list[dict]:
    """The summaries kept in ``folder``, :func:`ordered`."""
    return ordered([json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))])


def _title(s: dict) -> str:
    return f"{TITLES.get(s['model'], s['model'])} {s['bits']}-bit"


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def _both(row: dict) -> str:
    mc = "-" if row["mcycles"] is None else f"{row['mcycles']:.1f}"
    return f"{row['minstr']:.1f} / {mc}"


def _figures(s: dict) -> dict:
    """The summary's FP32, DGMS, onnxruntime FP32 and fastest onnxruntime int8 rows (the
    fastest by instructions, as the bench picks it)."""
    rows = {r["label"]: r for r in s["rows"]}
    peers = [r for r in s["rows"] if r["label"] in PEER_CONFIGS and r["minstr"]]
    return {"fp32": s["rows"][0], "dgms": s["rows"][1], "ort": rows.get(PEER_FP32),
            "int8": min(peers, key=lambda r: r["minstr"]) if peers else None}


def summary_table(summaries: list[dict]) -> list[str]:
    """One line per report: DGMS against our FP32, onnxruntime FP32 and the fastest
    onnxruntime int8, by instructions / by estimated cycles."""
    lines = ["| core | model | DGMS: M instr / M cycles | FP32 / DGMS | onnxruntime FP32 / DGMS "
             "| fastest onnxruntime int8 / DGMS | measured at |", "|---" * 7 + "|"]
    for s in summaries:
        f = _figures(s)
        d = f["dgms"]

        def over(row):
            if row is None:
                return "-"
            return f"{_ratio(row['minstr'], d['minstr'])} / {_ratio(row['mcycles'], d['mcycles'])}"

        int8 = over(f["int8"]) + (f" ({_config(f['int8'])})" if f["int8"] else "")
        lines.append(f"| {s['target']} | {_title(s)} | {_both(d)} | {over(f['fp32'])} | "
                     f"{over(f['ort'])} | {int8} | {s['commit']}, {s['date']} |")
    return lines


def _config(row: dict) -> str:
    return row["label"].removeprefix("onnxruntime int8 ").removesuffix(" (peer)")


def _table(s: dict) -> list[str]:
    d = _figures(s)["dgms"]
    lines = [f"### {_title(s)}", "",
             "| build | M instructions | M est. cycles | build / DGMS: by instr | by cycles |",
             "|---|---|---|---|---|"]
    for r in s["rows"]:
        mc = "-" if r["mcycles"] is None else f"{r['mcycles']:.1f}"
        lines.append(f"| {r['label']} | {r['minstr']:.1f} | {mc} | "
                     f"{_ratio(r['minstr'], d['minstr'])} | {_ratio(r['mcycles'], d['mcycles'])} |")
    lines += ["", f"Measured at {s['commit']} on {s['date']} (llvm-mca model: "
              f"{s['cycle_model'] or 'none'}; DGMS against our FP32: largest error "
              f"{s['max_rel_err_vs_fp32']:.1e}, top-1 "
              f"{'agrees' if s['top1_agrees_with_fp32'] else 'differs'}):", "", "```bash",
              s["command"], "```", ""]
    return lines


HEAD = """# Results: how fast on each core

The current figures of the built-in models (224 x 224, batch 1, one thread) on each emulated
core: M aarch64 instructions and M estimated cycles per inference ([measures.md](measures.md):
counted inside the device process; cycles estimated by llvm-mca's model of the core, not
times). Each table is one `dgms-tvm bench` report: our FP32 and DGMS builds beside
onnxruntime FP32 and its four int8 configurations (U8S8 / S8S8, QDQ / QOperator) on the same
core in the same run, with the command and the commit that measured it. The figures are
deterministic under emulation: machine load does not move them.

This page is made by `python scripts/results.py` from the reports kept in
[results/](results/) (`python scripts/results.py add OUT...` keeps a bench's output
folders); do not edit it by hand. How the figures got here, run by run and issue by issue:
[log.md](log.md). x86 figures are times, which need a quiet machine: `scripts/bench_x86.py`
prints them side by side with onnxruntime's ([log.md](log.md) has the runs so far).
"""


def render(summaries: list[dict]) -> str:
    """The whole of ``docs/results.md``."""
    lines = [HEAD, "## Summary", "", "By instructions / by estimated cycles (higher: DGMS "
             "ahead):", "", *summary_table(summaries), ""]
    core = None
    for s in summaries:
        if s["target"] != core:
            core = s["target"]
            lines += [f"## {core}", ""]
        lines += _table(s)
    return "\n".join(lines).rstrip() + "\n"


def readme_block(text: str, summaries: list[dict]) -> str:
    """``text`` (the README) with its results block made from ``summaries``."""
    if README_BEGIN not in text or README_END not in text:
        raise UserError(f"README.md has no results block ({README_BEGIN} ... {README_END})")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    return head + README_BEGIN + "\n" + "\n".join(summary_table(summaries)) + "\n" + \
        README_END + tail


def write(folder: Path, results_md: Path, readme: Path, check: bool = False) -> list[Path]:
    """Write ``results_md`` and the README's block from the summaries in ``folder``; with
    ``check``, write nothing and return the files that differ from what they would be."""
    summaries = load(folder)
    if not summaries:
        raise UserError(f"no bench reports kept in {folder}")
    want = {results_md: render(summaries), readme: readme_block(readme.read_text(), summaries)}
    stale = [p for p, text in want.items() if not p.exists() or p.read_text() != text]
    if not check:
        for p in stale:
            p.write_text(want[p])
    return stale
