"""The bench's report: the per-layer table pairing two builds' kernels, the sparsity, and
report.md / report.json / report.png (:func:`write_report`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..measure.sites import group_layer, group_sites, kind_of
from . import floor, ort_int8
from .ort_int8 import PEER_CONFIGS


def layers(sites: dict, by: dict, keys: dict | None = None) -> list[dict]:
    """Per call site of ``main``: each build's kernel and its time / instructions per call.
    An int8 layer's input quantization and weight decode (kernels of their own, just before
    it) count in that layer's row. The builds come from the same graph: with as many sites
    they pair by position; otherwise (int8 convs doing the BatchNorm / add / relu after them)
    each site of the first build pairs with the next unpaired one of the second that runs the
    same layer (``keys[label][name]``: :func:`dgms_tvm.compiler.site_layers`, a conv's shape;
    the kernel's name where not given), and a site with none is done in a conv's epilogue
    there."""
    labels = list(sites)
    keys = keys or {}

    def key(label, group):
        return group_layer(keys.get(label, {}), group)

    def kind(a, b):
        return kind_of(next((k for k in (key(labels[0], a) if a else None,
                                         key(labels[1], b) if b else None)
                             if isinstance(k, tuple)), None))

    def macs(b):  # the layer's multiply-adds, by the second build's kernels
        return floor.macs(key(labels[1], b)) if b else None

    first, second = (group_sites(sites[lb]) for lb in labels)
    if len(first) == len(second):
        return [{"index": i, "kind": kind(a, b), labels[0]: _entry(a, labels[0], by),
                 labels[1]: _entry(b, labels[1], by), "macs": macs(b)}
                for i, (a, b) in enumerate(zip(first, second, strict=True))]
    used, rows = [False] * len(second), []
    for a in first:
        ea = _entry(a, labels[0], by)
        j = next((j for j, b in enumerate(second)
                  if not used[j] and key(labels[1], b) == key(labels[0], a)), None)
        if j is None:
            eb = {"kernel": "(in a conv's epilogue)", "median_ms": 0.0,
                  **{k: None if ea[k] is None else 0.0 for k in ("minstr", "mcycles")}}
        else:
            used[j] = True
            eb = _entry(second[j], labels[1], by)
        # a layer the second build does in a conv's epilogue counts with that conv's kind
        k = kind(a, None) if j is not None or not rows else rows[-1]["kind"]
        rows.append({"kind": k, labels[0]: ea, labels[1]: eb,
                     "macs": macs(second[j]) if j is not None else None,
                     **({"epilogue": True} if j is None else {})})
    for j in (j for j, u in enumerate(used) if not u):  # in the second build only
        eb = _entry(second[j], labels[1], by)
        ea = {"kernel": "-", "median_ms": 0.0,
              **{k: None if eb[k] is None else 0.0 for k in ("minstr", "mcycles")}}
        rows.append({"kind": kind(None, second[j]), labels[0]: ea, labels[1]: eb,
                     "macs": macs(second[j])})
    return [{"index": i, **r} for i, r in enumerate(rows)]


def sparsity(manifest: dict) -> dict | None:
    """Share of exact zeros (DGMS's pinned component) over the codebook layers' weights, and
    per layer."""
    layers = [r for r in manifest["layers"] if r.get("sparsity") is not None and r["lowered"]]
    if not layers:
        return None
    sizes = [int(np.prod(r["shape"])) for r in layers]
    zeros = sum(r["sparsity"] * n for r, n in zip(layers, sizes, strict=True))
    return {"overall": zeros / sum(sizes),
            "layers": {r["name"]: r["sparsity"] for r in layers},
            "zero_inputs": sum(r.get("zero_inputs", 0) for r in layers)}


def _entry(names: list[str], label: str, by: dict) -> dict:
    parts = [_strip(by[("kernel", label, nm)]) for nm in names]
    mi, mc = [p["minstr"] for p in parts], [p["mcycles"] for p in parts]
    out = {"kernel": " + ".join(names), "median_ms": sum(p["median_ms"] for p in parts),
           "minstr": None if None in mi else sum(mi),
           "mcycles": None if None in mc else sum(mc)}
    if len(parts) > 1:  # an int8 layer: what its quantize / decode / conv kernels take each
        out["parts"] = [{"kernel": nm, **p} for nm, p in zip(names, parts, strict=True)]
    return out


def _strip(res: dict) -> dict:
    ms = res["ms"]
    return {"median_ms": float(np.median(ms)), "minstr": res["minstr"],
            "mcycles": res.get("mcycles")}


def format_markdown(rep: dict) -> str:
    lines = [f"# {rep['model']} {rep['bits']}-bit vs FP32 on {rep['target']} "
             f"(device key `{rep['device_key']}`, tracker {rep['tracker']})", "",
             "| build | M instructions | M cycles (estimated) | median ms | min ms | max ms | "
             "weights MiB | library MiB | lowered |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rep["rows"]:
        mi = "-" if r["minstr"] is None else f"{r['minstr']:.1f}"
        mc = "-" if r.get("mcycles") is None else f"{r['mcycles']:.1f}"
        lines.append(f"| {r['label']} | {mi} | {mc} | {r['median_ms']:.2f} | {r['min_ms']:.2f} | "
                     f"{r['max_ms']:.2f} | {r['weight_bytes'] / 2**20:.2f} | "
                     f"{r['library_bytes'] / 2**20:.2f} | {r['lowered']} |")
    lines.append("")
    peers = [r for r in rep["rows"][2:] if r["minstr"]]
    if peers and rep["rows"][1]["minstr"]:
        dgms = rep["rows"][1]["minstr"]
        lines.append("- peer rows: " + "; ".join(
            f"{r['label']} / DGMS instructions = {r['minstr'] / dgms:.2f}x" for r in peers))
        cyc = rep["rows"][1].get("mcycles")
        if cyc and all(r.get("mcycles") for r in peers):
            lines.append("- peer rows by estimated cycles: " + "; ".join(
                f"{r['label']} / DGMS = {r['mcycles'] / cyc:.2f}x" for r in peers))
        int8 = {r["label"]: r["minstr"] for r in peers if r["label"] in PEER_CONFIGS}
        if int8:
            best = ort_int8.fastest(int8)
            lines.append(f"- **fastest onnxruntime int8 configuration on this core: "
                         f"{PEER_CONFIGS[best].name}; its instructions / DGMS = "
                         f"{int8[best] / dgms:.2f}x** (the goal is at least 1x)")
            by_cyc = {r["label"]: r.get("mcycles") for r in peers if r["label"] in int8}
            if cyc and all(by_cyc.values()):  # the same question by the second measure
                quickest = ort_int8.fastest(by_cyc)
                lines.append(f"- **fastest by estimated cycles: {PEER_CONFIGS[quickest].name}; "
                             f"its cycles / DGMS = {by_cyc[quickest] / cyc:.2f}x**")
    if rep["instruction_ratio"] is not None:
        lines.append(f"- **instruction-count ratio FP32 / DGMS: "
                     f"{rep['instruction_ratio']:.2f}x** "
                     "(aarch64 instructions per inference, counted inside the device process "
                     "by a TCG plugin: the ARM speed proxy on an emulated device)")
    if rep.get("cycle_ratio") is not None:
        lines.append(f"- **estimated-cycle ratio FP32 / DGMS: {rep['cycle_ratio']:.2f}x** (each "
                     "executed block weighed by llvm-mca's scheduling model "
                     f"{rep['cycle_model']}: the second ARM speed proxy)")
    lines += [f"- time ratio FP32 / DGMS: {rep['speedup_time']:.2f}x; weight size "
              f"ratio {rep['size_ratio']:.2f}x",
              f"- DGMS outputs vs FP32 reference: max relative error "
              f"{rep['max_rel_err_vs_fp32']:.1e}; top-1 "
              f"{'agrees' if rep.get('top1_agrees_with_fp32') else 'DIFFERS'}",
              f"- {rep['repeat']} repeats x {rep['number']} calls, batch 1"]
    if rep.get("sparsity"):
        sp = rep["sparsity"]["layers"].values()
        lines.append(f"- DGMS weight sparsity (exact zeros): {rep['sparsity']['overall']:.1%} "
                     f"over the codebook layers (per layer {min(sp):.1%} to {max(sp):.1%}; "
                     "report.json lists each); zero skipping dropped "
                     f"{rep['sparsity'].get('zero_inputs', 0)} all-zero input channels "
                     "(the rest of the zeros are scattered)")
    if rep.get("strategy"):
        st = rep["strategy"]
        lines.append(f"- DGMS strategy {st['requested']} -> {st['resolved']} ("
                     + ", ".join(f"{n} conv layers {k}" for k, n in st["layers"].items() if n)
                     + ")")
    for label, t in (rep.get("tuning") or {}).items():
        lines.append(f"- {label}: " + (f"{t['tuned_kernels']} of {t['kernels']} kernels from "
                                        f"tuning logs {t['logs']}" if t["logs"] else
                                        "hand schedules (no tuning logs for this target)"))
    lines.append(f"- run on {rep.get('devices', 1)} device(s) under the key at once "
                 f"({rep['seconds']:.0f} s in all, compile included)")
    if rep.get("peer_kit"):
        lines.append(f"- onnxruntime peers: not run through the tracker (onnxruntime is no TVM "
                     f"module). To time them on the board, copy `{rep['peer_kit']}/` there and "
                     "run `python3 time_peers.py` (with `pip install onnxruntime`): FP32 and "
                     "its int8 in each documented configuration, on this bench's input.")
    if rep["emulated"]:
        lines.append("- **Emulated device (QEMU user mode)**: the times are emulation times, "
                     "not ARM speed (QEMU runs FP32 code about 3x slower per instruction than "
                     "integer code, so time ratios are biased): a side column only.")
    lines += _hot_lines(rep) + _kind_lines(rep) + floor.lines(rep) + _layer_lines(rep)
    return "\n".join(lines) + "\n"


def _hot_lines(rep: dict) -> list[str]:
    """Where each row's estimated cycles go: the blocks charged the most, by their mnemonics
    (what tells one kernel's code from another's where the two measures disagree)."""
    rows = [r for r in rep["rows"] if r.get("hot")]
    if not rows:
        return []
    lines = ["", f"## Where the estimated cycles go ({rep.get('cycle_model')})", "",
             "The blocks charged the most cycles in each row: share of the row's cycles, the "
             "block's instructions, its cycles per instruction, its commonest mnemonics.", ""]
    for r in rows:
        lines.append(f"- **{r['label']}**: " + "; ".join(
            f"{h['share']:.0%} in {h['instructions']} instr at {h['cpi']:.2f} cycles/instr "
            f"({h['mix']})" for h in r["hot"]))
    return lines


def by_kind(rep: dict) -> dict[str, dict]:
    """The per-layer table summed by kind of layer, for both builds: layers (a row the other
    build does in a conv's epilogue adds its figures, not a layer), and each build's M
    instructions and M cycles (None where not counted)."""
    labels = [r["label"] for r in rep["rows"][:2]]
    out: dict[str, dict] = {}
    for layer in rep.get("layers") or []:
        k = out.setdefault(layer.get("kind", "other"), {"layers": 0, **{
            f"{lb} {m}": 0.0 for lb in labels for m in ("minstr", "mcycles")}})
        k["layers"] += not layer.get("epilogue")
        for lb in labels:
            for m in ("minstr", "mcycles"):
                v = layer[lb].get(m)
                k[f"{lb} {m}"] = None if v is None or k[f"{lb} {m}"] is None else (
                    k[f"{lb} {m}"] + v)
    return out


def _kind_lines(rep: dict) -> list[str]:
    """Where the two builds differ, and where the two measures do: the per-layer table by
    kind of layer, with cycles per instruction."""
    kinds = by_kind(rep)
    a, b = (r["label"] for r in rep["rows"][:2])
    if not kinds or any(k[f"{lb} mcycles"] is None for k in kinds.values() for lb in (a, b)):
        return []
    lines = ["", "## By kind of layer (the per-layer table summed; a BatchNorm / add / relu "
             "kernel counts with the conv whose epilogue does it in the other build)", "",
             f"| kind | layers | {a} M instr | {b} M instr | by instr | {a} M cycles | "
             f"{b} M cycles | by cycles | {a} cycles/instr | {b} cycles/instr |",
             "|---" * 10 + "|"]

    def ratio(x, y, unit="x"):
        return f"{x / y:.2f}{unit}" if x and y else "-"

    for name, k in sorted(kinds.items(), key=lambda kv: -kv[1][f"{a} mcycles"]):
        ai, bi, ac, bc = (k[f"{lb} {m}"] for m in ("minstr", "mcycles") for lb in (a, b))
        lines.append(f"| {name} | {k['layers']} | {ai:.1f} | {bi:.1f} | {ratio(ai, bi)} | "
                     f"{ac:.1f} | {bc:.1f} | {ratio(ac, bc)} | {ratio(ac, ai, '')} | "
                     f"{ratio(bc, bi, '')} |")
    return lines


def _layer_lines(rep: dict) -> list[str]:
    layers = rep.get("layers") or []
    if not layers:
        return []
    labels = [r["label"] for r in rep["rows"][:2]]
    if not all(lb in layers[0] for lb in labels):
        return []
    counted = layers[0][labels[0]]["minstr"] is not None
    cyc = counted and all(layer[lb].get("mcycles") is not None
                          for layer in layers for lb in labels)
    unit = "M instr" if counted else "ms"
    key = "minstr" if counted else "median_ms"
    head = (f"| # | {labels[0]} kernel | {labels[1]} kernel | {labels[0]} {unit} | "
            f"{labels[1]} {unit} | {labels[0]} / {labels[1]} |")
    if cyc:
        head += f" {labels[0]} M cycles | {labels[1]} M cycles | cycles ratio |"
    lines = ["", f"## Per layer: every kernel call of `main`, run alone on the device "
             f"({'instructions per call' if counted else 'median time per call'}"
             f"{', and estimated cycles' if cyc else ''})", "", head,
             "|---" * (9 if cyc else 6) + "|"]
    tot, ctot = [0.0, 0.0], [0.0, 0.0]
    for layer in layers:
        a, b = layer[labels[0]], layer[labels[1]]
        tot[0] += a[key]
        tot[1] += b[key]
        ratio = f"{a[key] / b[key]:.2f}x" if a[key] and b[key] else "-"
        line = (f"| {layer['index']} | `{a['kernel']}` | `{b['kernel']}` | "
                f"{_cell(a, key)} | {_cell(b, key)} | {ratio} |")
        if cyc:
            ctot[0] += a["mcycles"]
            ctot[1] += b["mcycles"]
            cr = f"{a['mcycles'] / b['mcycles']:.2f}x" if a["mcycles"] and b["mcycles"] else "-"
            line += f" {_cell(a, 'mcycles')} | {_cell(b, 'mcycles')} | {cr} |"
        lines.append(line)
    whole = [rep["rows"][i]["minstr" if counted else "median_ms"] for i in (0, 1)]
    last = f"| sum | | | {tot[0]:.2f} | {tot[1]:.2f} | {tot[0] / tot[1]:.2f}x |"
    if cyc:
        last += f" {ctot[0]:.2f} | {ctot[1]:.2f} | {ctot[0] / ctot[1]:.2f}x |"
    lines.append(last)
    lines += ["", f"- the kernels run alone add up to {tot[0] / whole[0]:.0%} ({labels[0]}) "
              f"and {tot[1] / whole[1]:.0%} ({labels[1]}) of the whole-model figure; the rest "
              "is the VM, allocation and the call overhead"]
    return lines


def _cell(entry: dict, key: str) -> str:
    """A layer's figure; an int8 layer's split over its kernels after it, in order."""
    if "parts" not in entry:
        return f"{entry[key]:.3f}"
    return f"{entry[key]:.3f} ({' + '.join(f'{p[key]:.3f}' for p in entry['parts'])})"


def write_report(rep: dict, output: Path) -> None:
    if len(rep["rows"]) > 1 and rep.get("layers"):
        rep["floor"] = floor.rows(rep)
    (output / "report.json").write_text(json.dumps(rep, indent=2) + "\n")
    (output / "report.md").write_text(format_markdown(rep))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["label"] for r in rep["rows"]]
    colors = (["#888888", "#1f77b4", "#e39c4b"] + ["#c0504d"] * len(labels))[: len(labels)]
    layers = rep.get("layers") or []
    pair = all(lb in layers[0] for lb in labels[:2]) if layers else False
    if pair:
        fig, (ax, lax) = plt.subplots(2, 1, figsize=(9, 0.7 * len(labels) + 5.6),
                                      gridspec_kw={"height_ratios": [1, 1.6]})
        key = "minstr" if layers[0][labels[0]]["minstr"] is not None else "median_ms"
        idx = np.arange(len(layers))
        for k, lb in enumerate(labels[:2]):
            lax.bar(idx + (k - 0.5) * 0.4, [layer[lb][key] for layer in layers], 0.4,
                    label=lb, color=colors[k])
        lax.set_xlabel("kernel call in execution order (#)")
        lax.set_ylabel("M instructions per call" if key == "minstr" else "ms per call")
        lax.legend(fontsize=8)
        lax.set_title("per layer", fontsize=9)
    else:
        fig, ax = plt.subplots(figsize=(7, 0.7 * len(labels) + 1.6))
    if rep["instruction_ratio"] and rep.get("cycle_ratio"):
        y = np.arange(len(labels))
        ax.barh(y - 0.2, [r["minstr"] for r in rep["rows"]], 0.4, color=colors,
                label="M instructions")
        ax.barh(y + 0.2, [r["mcycles"] or 0 for r in rep["rows"]], 0.4, color=colors,
                hatch="//", alpha=0.6, label="M cycles (estimated)")
        ax.set_yticks(y, labels)
        ax.legend(fontsize=8)
        ax.set_xlabel("per inference (emulated core, one thread; cycles by "
                      f"{rep['cycle_model']})")
    elif rep["instruction_ratio"]:
        ax.barh(labels, [r["minstr"] for r in rep["rows"]], color=colors)
        ax.set_xlabel("M aarch64 instructions per inference (emulated core, one thread)")
    else:
        med = np.array([r["median_ms"] for r in rep["rows"]])
        lo = med - np.array([r["min_ms"] for r in rep["rows"]])
        hi = np.array([r["max_ms"] for r in rep["rows"]]) - med
        ax.barh(labels, med, xerr=[lo, hi], color=colors, capsize=4)
        ax.set_xlabel("latency per inference, ms (median, min-max)")
    ratio = (f"instructions FP32 / DGMS = {rep['instruction_ratio']:.2f}x"
             if rep["instruction_ratio"] else f"time FP32 / DGMS = {rep['speedup_time']:.2f}x")
    if rep.get("cycle_ratio"):
        ratio += f", est. cycles {rep['cycle_ratio']:.2f}x"
    ax.set_title(f"{rep['model']} on {rep['target']}: {ratio}", fontsize=10)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(output / "report.png", dpi=120)
    plt.close(fig)
