"""Per layer on the host: each conv's kernels timed alone beside onnxruntime's own time for
the same conv (its profiler), so that a gap between two whole-model times is traced to the
layers, and the kind of layer, that make it (``bench_x86.py --per-layer``).

Ours: :func:`dgms_tvm.measure.host.layers` (every PrimFunc ``main`` calls, built for the
host and timed alone on random operands). onnxruntime: a session
with profiling on, the median over the timed runs of each node's kernel time. The two pair
by the conv's shape as onnxruntime reports it (input and output channels and sizes: its
profile names no weight shape); among convs of one shape, by layer name where the export
kept its module scopes (:func:`same_layer`), else in execution order.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from ..measure.host import conv_key

#: onnxruntime's conv nodes (after its graph fusions, QDQ included).
ORT_CONVS = ("Conv", "FusedConv", "QLinearConv", "ConvInteger", "NhwcConv", "NhwcFusedConv")


def onnxruntime(onnx_model: bytes, x: np.ndarray, runs: int) -> list[dict]:
    """Each node of one onnxruntime session (CPU, full graph optimisation), in execution
    order: op, median ms over ``runs`` timed runs, and a conv's candidate keys."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(onnx_model, opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x}
        for _ in range(runs + 1):  # the first is a warm-up
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    nodes: dict[str, dict] = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        node = nodes.setdefault(e["name"], {"op": e["args"]["op_name"], "us": [],
                                            "args": e["args"],
                                            "scope": e["name"][:-len("_kernel_time")]})
        node["us"].append(e["dur"])
    rows = []
    for node in nodes.values():
        us = node["us"][1:] or node["us"]
        rows.append({"op": node["op"], "ms": 1e-3 * float(np.median(us)),
                     "keys": _ort_keys(node["op"], node["args"]), "scope": node["scope"]})
    return rows


def _ort_keys(op: str, args: dict) -> tuple:
    """The keys a conv node of onnxruntime's may have: its profile gives shapes, not their
    layout, and on x86 QLinearConv runs channels-last (its NHWC transformer), so both
    readings are candidates; our layer's key picks one."""
    if op not in ORT_CONVS:
        return ()
    (shape_in,) = args["input_type_shape"][0].values()
    (shape_out,) = args["output_type_shape"][0].values()
    if len(shape_in) != 4 or len(shape_out) != 4:
        return ()
    (n, c, h, w), (_, o, oh, ow) = shape_in, shape_out
    return conv_key(n, c, h, w, o, oh, ow), conv_key(n, w, c, h, ow, o, oh)


def same_layer(layer: str | None, scope: str | None) -> bool:
    """Whether onnxruntime's node ``scope`` (``/layer3/layer3.0/conv1/Conv_quant``: the
    exporter's module scopes, then the node) is our layer ``layer``
    (``layer3.0.conv1.weight``): its last module scope ends the layer's path, the one
    before is in it."""
    if not layer or not scope:
        return False
    path = layer.removesuffix(".weight")
    scopes = [c for c in scope.split("/") if c][:-1]
    return bool(scopes) and path.endswith(scopes[-1]) and (
        len(scopes) < 2 or scopes[-2] in path)


def pair(mine: list[dict], theirs: list[dict]) -> dict:
    """Our layers beside onnxruntime's convs of the same shape: the one of the same layer
    where both name it (a downsample conv and the 3x3 conv beside it have one shape, and
    onnxruntime may run them in the other order), else the first unpaired one in execution
    order; what is left on either side (no conv, or none of that shape) is summed as
    ``other``, and the paired layers by kind."""
    rows, ours_other, paired = [], 0.0, set()
    for m in mine:
        same = [j for j, t in enumerate(theirs)
                if j not in paired and m["key"] is not None and m["key"] in t["keys"]]
        j = next((j for j in same if same_layer(m.get("layer"), theirs[j].get("scope"))),
                 same[0] if same else None)
        if j is None:
            ours_other += m["ms"]
            continue
        paired.add(j)
        t = theirs[j]
        rows.append({"kernels": m["kernels"], "kind": m["kind"], "key": list(m["key"]),
                     "ms": m["ms"], "parts": m.get("parts", [m["ms"]]), "peer_op": t["op"],
                     "peer_ms": t["ms"]})
    peer_other = sum(t["ms"] for j, t in enumerate(theirs) if j not in paired)
    kinds: dict[str, dict] = {}
    for r in rows:
        k = kinds.setdefault(r["kind"], {"ms": 0.0, "peer_ms": 0.0, "layers": 0})
        k["ms"] += r["ms"]
        k["peer_ms"] += r["peer_ms"]
        k["layers"] += 1
    return {"layers": rows, "other_ms": ours_other, "peer_other_ms": peer_other,
            "kinds": kinds}


def format_lines(per: dict, ours_label: str, peer_label: str) -> list[str]:
    """The per-kind summary (where the gap is), then each layer."""
    lines = ["", f"per layer: {ours_label} vs {peer_label} (each kernel alone; onnxruntime's "
             "profiler per node), ms", f"{'layer kind':<14} {'layers':>6} {'ours':>8} "
             f"{'peer':>8} {'ours/peer':>9} {'gap ms':>8}"]
    other = {"ms": per["other_ms"], "peer_ms": per["peer_other_ms"], "layers": "-"}
    kinds = sorted(per["kinds"].items(), key=lambda kv: kv[1]["peer_ms"] - kv[1]["ms"])
    for kind, k in [*kinds, ("other", other)]:
        ratio = k["ms"] / k["peer_ms"] if k["peer_ms"] else float("inf")
        lines.append(f"{kind:<14} {k['layers']!s:>6} {k['ms']:>8.2f} {k['peer_ms']:>8.2f} "
                     f"{ratio:>8.2f}x {k['ms'] - k['peer_ms']:>8.2f}")
    lines.append(f"{'#':>3} {'kind':<10} {'C_in x H x W -> C_out x OH x OW':<32} {'ours ms':>8} "
                 f"{'peer ms':>8} {'ratio':>6}  kernels (ms each)")
    for i, r in enumerate(per["layers"]):
        _, c, h, w, o, oh, ow = r["key"]
        shape = f"{c}x{h}x{w} -> {o}x{oh}x{ow}"
        lines.append(f"{i:>3} {r['kind']:<10} {shape:<32} {r['ms']:>8.3f} {r['peer_ms']:>8.3f} "
                     f"{r['ms'] / max(r['peer_ms'], 1e-9):>5.2f}x  " + " + ".join(
                         f"{k} ({ms:.3f})" for k, ms in zip(r["kernels"].split(" + "),
                                                            r["parts"], strict=True)))
    return lines
