"""The host benchmark (scripts/bench_x86.py) on the small digits model: every row is built,
checked against the others and timed, onnxruntime FP32 and static int8 beside them (each
documented int8 configuration: U8S8 / S8S8, QDQ / QOperator)."""

from dgms_tvm.bench import host_layers, on_host


def test_compare_reports_every_row():
    rep = on_host.compare("digitnet", 4, repeat=1, number=1, per_layer=True)
    assert list(rep["rows"]) == ["fp32 TVM default", "fp32 same kernels", "codebook 4-bit",
                                 "codebook 4-bit int8", "onnxruntime fp32",
                                 "onnxruntime int8 U8S8 QDQ", "onnxruntime int8 S8S8 QDQ",
                                 "onnxruntime int8 U8S8 QOperator",
                                 "onnxruntime int8 S8S8 QOperator"]
    assert rep["max_rel_err_between_builds"] < 1e-4
    assert 0 < rep["int8_rel_err_vs_exact"] < 0.1
    assert all(r["median_ms"] > 0 for r in rep["rows"].values())
    assert rep["rows"]["codebook 4-bit int8"]["lowered"] > 0
    text = on_host.format_report(rep)
    # The goal line holds the build against the fastest int8 configuration, whichever it is.
    best = on_host.fastest_int8_peer(rep["rows"])
    ms = {k: r["median_ms"] for k, r in rep["rows"].items()}
    assert ms[best] == min(v for k, v in ms.items() if k.startswith("onnxruntime int8"))
    assert (f"fastest onnxruntime int8 configuration here: {best.split(' ', 2)[2]}; it / "
            f"codebook int8 time ratio: {ms[best] / ms['codebook 4-bit int8']:.2f}x") in text
    # Per layer: every conv of the int8 build beside onnxruntime's conv of the same shape
    # (each of its convs paired once), the rest summed on both sides.
    per = rep["layers"]
    assert per["ours"] == "codebook 4-bit int8" and per["peer"] == best
    assert len(per["layers"]) == 4  # digitnet's four convs
    assert all(r["ms"] > 0 and r["peer_ms"] > 0 and r["peer_op"] in host_layers.ORT_CONVS
               for r in per["layers"])
    assert all(len(r["parts"]) == len(r["kernels"].split(" + ")) and
               abs(sum(r["parts"]) - r["ms"]) < 1e-9 for r in per["layers"])
    assert sum(k["layers"] for k in per["kinds"].values()) == 4
    assert per["peer_other_ms"] > 0 and per["other_ms"] > 0
    assert "per layer: codebook 4-bit int8 vs" in text and "layer kind" in text


def _ort(op, shape_in, shape_out, ms):
    args = {"input_type_shape": [{"uint8": shape_in}], "output_type_shape": [{"uint8": shape_out}]}
    return {"op": op, "ms": ms, "keys": host_layers._ort_keys(op, args)}


def test_layers_pair_by_shape_in_either_layout_and_in_order():
    """onnxruntime's profile gives shapes, not layouts: a channels-last QLinearConv pairs
    with our NCHW layer; two layers of one shape pair in order; an unmatched one on either
    side counts as other."""
    key = host_layers.conv_key
    mine = [{"kernels": "a", "ms": 2.0, "key": key(1, 3, 8, 8, 16, 8, 8), "kind": "3x3"},
            {"kernels": "b", "ms": 1.0, "key": key(1, 16, 8, 8, 16, 8, 8), "kind": "3x3"},
            {"kernels": "c", "ms": 3.0, "key": key(1, 16, 8, 8, 16, 8, 8), "kind": "3x3"},
            {"kernels": "q", "ms": 0.5, "key": None, "kind": "other"}]
    theirs = [_ort("QLinearConv", [1, 8, 8, 3], [1, 8, 8, 16], 1.0),  # NHWC
              _ort("QuantizeLinear", [1, 3, 8, 8], [1, 3, 8, 8], 0.25),
              _ort("QLinearConv", [1, 8, 8, 16], [1, 8, 8, 16], 0.5),
              _ort("QLinearConv", [1, 8, 8, 16], [1, 8, 8, 16], 1.5),
              _ort("QLinearConv", [1, 8, 8, 32], [1, 8, 8, 16], 0.75)]  # none of ours
    per = host_layers.pair(mine, theirs)
    assert [(r["kernels"], r["peer_ms"]) for r in per["layers"]] == [("a", 1.0), ("b", 0.5),
                                                                      ("c", 1.5)]
    assert per["other_ms"] == 0.5 and per["peer_other_ms"] == 1.0
    assert per["kinds"] == {"3x3": {"ms": 6.0, "peer_ms": 3.0, "layers": 3}}
    text = "\n".join(host_layers.format_lines(per, "ours", "peer"))
    assert "3x3" in text and "2.00x" in text


def test_same_shape_layers_pair_by_name_where_both_have_one():
    """ResNet's downsample conv and the 3x3 conv beside it share a shape; onnxruntime may run
    the downsample first: each pairs with its own node by the exporter's module scopes."""
    key = host_layers.conv_key(1, 128, 28, 28, 256, 14, 14)
    mine = [{"kernels": "c1", "ms": 2.0, "key": key, "kind": "3x3 s2",
             "layer": "layer3.0.conv1.weight"},
            {"kernels": "ds", "ms": 1.0, "key": key, "kind": "1x1 s2",
             "layer": "layer3.0.downsample.0.weight"}]
    theirs = [dict(_ort("QLinearConv", [1, 28, 28, 128], [1, 14, 14, 256], 0.1),
                   scope="/layer3/layer3.0/downsample/downsample.0/Conv_quant"),
              dict(_ort("QLinearConv", [1, 28, 28, 128], [1, 14, 14, 256], 0.9),
                   scope="/layer3/layer3.0/conv1/Conv_quant")]
    per = host_layers.pair(mine, theirs)
    assert [(r["kernels"], r["peer_ms"]) for r in per["layers"]] == [("c1", 0.9), ("ds", 0.1)]
    assert not host_layers.same_layer("layer3.1.conv1.weight", "/layer3/layer3.0/conv1/Conv")
    assert not host_layers.same_layer(None, "/layer3/layer3.0/conv1/Conv")
