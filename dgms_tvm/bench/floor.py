"""How close each int8 conv comes to its floor: the layer's multiply-adds per instruction
(and per estimated cycle) of its conv kernel, against the multiply-adds one instruction of
its arithmetic makes (its family's ``peak``: 16 for ``sdot``, 32 for ``smmla``, ...).

The multiply-adds are the layer's own (its shape, before any padding of channels or
columns), so what a kernel computes in vain counts against it. The conv kernel alone is
weighed: the input's quantize and the weight's decode before it are in the per-layer table.
"""

from __future__ import annotations

from ..kernels import FAMILIES
from ..kernels.conv import Conv2dSpec
from ..targets import get_profile


def macs(layer) -> int | None:
    """Multiply-adds of a conv layer (:func:`dgms_tvm.compiler.site_layers`'s shape tuple),
    None for anything else."""
    if not isinstance(layer, tuple):
        return None
    n, c, h, w, o, kernel, stride, padding, dilation, groups = layer
    return Conv2dSpec(n, c, h, w, o, tuple(kernel), tuple(stride), tuple(padding),
                      tuple(dilation), groups).macs


def family_of(kernel: str) -> str | None:
    """The kernel family a kernel's name belongs to (the longest family name it starts with)."""
    return next((f for f in sorted(FAMILIES, key=len, reverse=True)
                 if kernel == f or kernel.startswith(f + "_")), None)


def rows(rep: dict) -> list[dict]:
    """Per layer of the DGMS build whose conv kernel has a peak on the report's core: its
    index, kind, conv kernel, multiply-adds, instructions and cycles, and the peak."""
    layers, label = rep.get("layers") or [], rep["rows"][1]["label"]
    profile, out = get_profile(rep["target"]), []
    for layer in layers:
        entry, n = layer.get(label), layer.get("macs")
        if not entry or not n:
            continue
        for part in entry.get("parts", [entry]):
            fam = FAMILIES.get(family_of(part["kernel"]) or "")
            peak = fam.peak(profile, rep["bits"]) if fam and fam.peak else None
            if peak and part.get("minstr"):
                out.append({"index": layer["index"], "kind": layer["kind"],
                            "kernel": part["kernel"], "mmacs": n * 1e-6,
                            "minstr": part["minstr"], "mcycles": part.get("mcycles"),
                            "instruction": peak[0], "peak": peak[1]})
    return out


def lines(rep: dict) -> list[str]:
    """The report's section: one row per int8 conv, then all of them together."""
    found = rep.get("floor") or []
    if not found:
        return []
    cyc = all(r["mcycles"] for r in found)
    out = ["", "## How close to the floor: the int8 convs (the layer's multiply-adds per "
           "instruction of its conv kernel, against the multiply-adds of one instruction of "
           "its arithmetic)", "",
           "| # | kind | conv kernel | M multiply-adds | M instr | per instr | peak | of peak |"
           + (" M cycles | per cycle |" if cyc else ""),
           "|---" * (10 if cyc else 8) + "|"]
    for r in found:
        per = r["mmacs"] / r["minstr"]
        line = (f"| {r['index']} | {r['kind']} | `{r['kernel']}` | {r['mmacs']:.1f} | "
                f"{r['minstr']:.3f} | {per:.1f} | {r['peak']} ({r['instruction']}) | "
                f"{per / r['peak']:.0%} |")
        if cyc:
            line += f" {r['mcycles']:.3f} | {r['mmacs'] / r['mcycles']:.1f} |"
        out.append(line)
    total, instr = sum(r["mmacs"] for r in found), sum(r["minstr"] for r in found)
    floor = sum(r["mmacs"] / r["peak"] for r in found)
    out += ["", f"- these {len(found)} convs: {total:.0f} M multiply-adds in {instr:.1f} M "
            f"instructions ({total / instr:.1f} a instruction"
            + (f", {total / sum(r['mcycles'] for r in found):.1f} a cycle" if cyc else "")
            + f"); at the peak they would take {floor:.1f} M ({floor / instr:.0%} of theirs)"]
    return out
