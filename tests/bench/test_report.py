"""The device benchmark's per-layer table: int8 layers group their quantize / decode
kernels with the conv after them, and the table shows each part beside the sum."""

from dgms_tvm.bench import report
from dgms_tvm.measure import sites


def test_int8_layer_rows_group_their_kernels_and_show_the_split():
    fp32 = ["fp32_conv2d_a", "relu", "fp32_conv2d_b"]
    dgms = ["q8_quant_a", "q8_conv2d_a_w8_pre", "relu", "q8_quant_b", "q8_decode_b",
            "q8_conv2d_b_pre"]
    counts = {"fp32_conv2d_a": 4.0, "relu": 0.5, "fp32_conv2d_b": 8.0, "q8_quant_a": 0.25,
              "q8_conv2d_a_w8_pre": 1.0, "q8_quant_b": 0.125, "q8_decode_b": 0.5,
              "q8_conv2d_b_pre": 2.0}
    by = {("kernel", label, nm): {"ms": [counts[nm]], "minstr": counts[nm]}
          for label, names in (("FP32", fp32), ("DGMS", dgms)) for nm in names}
    layers = report.layers({"FP32": fp32, "DGMS": dgms}, by)
    assert [la["DGMS"]["kernel"] for la in layers] == [
        "q8_quant_a + q8_conv2d_a_w8_pre", "relu", "q8_quant_b + q8_decode_b + q8_conv2d_b_pre"]
    last = layers[2]["DGMS"]
    assert last["minstr"] == 2.625 and [p["minstr"] for p in last["parts"]] == [0.125, 0.5, 2.0]
    assert "parts" not in layers[1]["DGMS"] and "parts" not in layers[2]["FP32"]
    rep = {"rows": [{"label": "FP32", "minstr": 12.5}, {"label": "DGMS", "minstr": 4.375}],
           "layers": layers}
    table = "\n".join(report._layer_lines(rep))
    assert "| 8.000 | 2.625 (0.125 + 0.500 + 2.000) | 3.05x |" in table
    assert "| sum | | | 12.50 | 4.38 | 2.86x |" in table


def test_convs_with_an_epilogue_pair_with_the_fp32_layers_they_replace():
    """An int8 conv doing the BatchNorm / add / relu after it leaves fewer sites than the
    FP32 build: layers pair by the conv each kernel runs (its spec's shape, from
    ``compiler.site_layers``); the FP32 BatchNorm rows show 0 beside them.
    The residual block's two convs run in another order in the DGMS build (the add's inputs
    first), and still pair."""
    c1 = "conv2d_n1_c8_h8_w8_o16_k3x3_s2x2_p1x1x1x1_d1x1_g1"
    c2 = "conv2d_n1_c16_h4_w4_o16_k3x3_s1x1_p1x1x1x1_d1x1_g1"
    ds = "conv2d_n1_c8_h8_w8_o16_k1x1_s2x2_p0x0x0x0_d1x1_g1"
    fp32 = [f"fp32_{c1}", "fused_batch_norm_relu", f"fp32_{c2}", f"fp32_{ds}",
            "fused_batch_norm_batch_norm_add_relu", "max_pool2d"]
    dgms = ["q8_quant_a", f"q8_{c1}_w8_pre_bias_relu", "q8_quant_b", "q8_decode_b",
            f"q8_{ds}_b4_pre_bias", "q8_quant_c", "q8_decode_c", f"q8_{c2}_b4_pre_bias_res_relu",
            "max_pool2d"]
    by = {("kernel", label, nm): {"ms": [1.0], "minstr": float(i + 1)}
          for label, names in (("FP32", fp32), ("DGMS", dgms)) for i, nm in enumerate(names)}
    keys = {label: {nm: next((c for c in (c1, c2, ds) if c in nm), nm) for nm in names}
            for label, names in (("FP32", fp32), ("DGMS", dgms))}
    layers = report.layers({"FP32": fp32, "DGMS": dgms}, by, keys)
    pairs = [(la["FP32"]["kernel"], la["DGMS"]["kernel"].split(" + ")[-1]) for la in layers]
    assert pairs == [(fp32[0], dgms[1]), (fp32[1], "(in a conv's epilogue)"),
                     (fp32[2], dgms[7]), (fp32[3], dgms[4]),
                     (fp32[4], "(in a conv's epilogue)"), (fp32[5], dgms[8])]
    assert layers[1]["DGMS"]["minstr"] == 0.0
    assert sum(la["DGMS"]["minstr"] for la in layers) == sum(range(1, 10))
    rep = {"rows": [{"label": "FP32", "minstr": 21.0}, {"label": "DGMS", "minstr": 45.0}],
           "layers": layers}
    table = "\n".join(report._layer_lines(rep))
    assert "| 2.000 | 0.000 | - |" in table


def test_a_gathered_stem_pairs_with_the_fp32_stem():
    """The stem on a core without sdot is three kernels (quantize, gather, 1x1 widening
    conv): one row, keyed by the conv the gather names (its 1x1 conv's own shape is no
    layer of the FP32 build)."""
    stem = (1, 3, 8, 8, 16, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1)
    pointwise = (1, 32, 4, 4, 16, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1)
    fp32 = ["fp32_stem", "fused_batch_norm_relu", "pool"]
    dgms = ["q8_quant_s", "q8_im2col_s", "q8l_conv2d_pw_bias_relu", "pool"]
    keys = {"FP32": {"fp32_stem": stem, "fused_batch_norm_relu": "fused_batch_norm_relu",
                     "pool": "pool"},
            "DGMS": {"q8_quant_s": "q8_quant_s", "q8_im2col_s": stem,
                     "q8l_conv2d_pw_bias_relu": pointwise, "pool": "pool"}}
    by = {("kernel", label, nm): {"ms": [1.0], "minstr": 1.0}
          for label, names in (("FP32", fp32), ("DGMS", dgms)) for nm in names}
    layers = report.layers({"FP32": fp32, "DGMS": dgms}, by, keys)
    assert [(la["FP32"]["kernel"], la["DGMS"]["kernel"]) for la in layers] == [
        ("fp32_stem", "q8_quant_s + q8_im2col_s + q8l_conv2d_pw_bias_relu"),
        ("fused_batch_norm_relu", "(in a conv's epilogue)"), ("pool", "pool")]
    assert layers[0]["kind"] == "3x3 s2"
    assert sites.group_layer(keys["DGMS"], ["pool"]) == "pool"


def test_site_layers_name_the_conv_whatever_its_kernel():
    """The same conv under the FP32, exact and int8 builds (and with its epilogue) has one
    key; a kernel that runs no conv keeps its name."""
    import torch

    from dgms_tvm import compiler, frontend
    from dgms_tvm.quant import hard_quantize
    from tests.passes.graphs import Block

    torch.manual_seed(0)
    net = Block().eval()
    hard_quantize(net, 4)
    imported = frontend.from_torch(net, (torch.randn(1, 8, 12, 12),))
    builds = [compiler.lower(imported, codebooks=False), compiler.lower(imported, 4),
              compiler.lower(imported, 4, strategy="int8")]
    convs = [[k for k in compiler.site_layers(b.mod).values() if isinstance(k, tuple)]
             for b in builds]
    assert len(convs[0]) == 5 and convs[0] == convs[1]
    assert sorted(convs[2]) == sorted(convs[0])  # the residual's two convs in another order
    assert (1, 8, 12, 12, 16, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1) in convs[0]


def test_layers_sum_by_kind_with_their_epilogues():
    """The per-layer table by kind of layer: a depthwise, a 1x1 and a strided 3x3 conv each
    a kind; a BatchNorm the other build does in a conv's epilogue counts with that conv; the
    rest is ``other``; both measures and cycles per instruction per kind."""
    dw = (1, 8, 8, 8, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 8)
    pw = (1, 8, 8, 8, 16, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1)
    s2 = (1, 16, 8, 8, 16, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1)
    assert [sites.kind_of(k) for k in (dw, pw, s2, "max_pool2d")] == [
        "depthwise", "1x1", "3x3 s2", "other"]
    fp32 = ["f_dw", "f_bn", "f_pw", "f_s2", "max_pool2d"]
    dgms = ["d_dw", "q8_quant_a", "d_pw", "d_s2", "max_pool2d"]
    keys = {"FP32": {"f_dw": dw, "f_pw": pw, "f_s2": s2},
            "DGMS": {"d_dw": dw, "d_pw": pw, "d_s2": s2}}
    fig = {"f_dw": 2.0, "f_bn": 1.0, "f_pw": 8.0, "f_s2": 4.0, "max_pool2d": 0.5,
           "d_dw": 2.0, "q8_quant_a": 0.5, "d_pw": 1.5, "d_s2": 2.0}
    by = {("kernel", label, nm): {"ms": [1.0], "minstr": fig[nm], "mcycles": 2 * fig[nm]}
          for label, names in (("FP32", fp32), ("DGMS", dgms)) for nm in names}
    layers = report.layers({"FP32": fp32, "DGMS": dgms}, by, keys)
    assert [la["kind"] for la in layers] == ["depthwise", "depthwise", "1x1", "3x3 s2", "other"]
    assert [bool(la.get("epilogue")) for la in layers] == [False, True, False, False, False]
    rep = {"rows": [{"label": "FP32"}, {"label": "DGMS"}], "layers": layers}
    kinds = report.by_kind(rep)
    assert kinds["depthwise"] == {"layers": 1, "FP32 minstr": 3.0, "FP32 mcycles": 6.0,
                                  "DGMS minstr": 2.0, "DGMS mcycles": 4.0}
    assert kinds["1x1"]["DGMS minstr"] == 2.0  # its input quantize counts in it
    text = "\n".join(report._kind_lines(rep))
    assert "| 1x1 | 1 | 8.0 | 2.0 | 4.00x | 16.0 | 4.0 | 4.00x | 2.00 | 2.00 |" in text


def test_int8_convs_against_their_floor():
    """The floor section: each int8 conv's multiply-adds (the layer's own, from its shape)
    per instruction and per estimated cycle of its conv kernel alone, against its
    instruction's peak on the report's core (smmla 32 on neoverse-n2, sdot 16 on
    neoverse-n1); a gathered stem counts the stem's multiply-adds, not its 1x1 conv's."""
    c3 = (1, 64, 56, 56, 64, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)  # 115.6 M
    stem = (1, 3, 224, 224, 64, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1), 1)  # 118.0 M
    pw = (1, 200, 112, 112, 64, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1)
    assert report.floor.macs(c3) == 56 * 56 * 64 * 64 * 9 and report.floor.macs("pool") is None
    fp32 = ["fp32_stem", "fp32_c3", "pool"]
    dgms = ["q8_quant_s", "q8_im2col_s", "q8m_conv2d_pw_w8_pre", "q8_quant_c",
            "q8m_conv2d_c3_b4_pre", "pool"]
    keys = {"FP32": {"fp32_stem": stem, "fp32_c3": c3},
            "DGMS": {"q8_im2col_s": stem, "q8m_conv2d_pw_w8_pre": pw,
                     "q8m_conv2d_c3_b4_pre": c3}}
    fig = {"q8m_conv2d_pw_w8_pre": 7.375, "q8m_conv2d_c3_b4_pre": 7.225}
    by = {("kernel", label, nm): {"ms": [1.0], "minstr": fig.get(nm, 1.0),
                                  "mcycles": fig.get(nm, 1.0) / 2}
          for label, names in (("FP32", fp32), ("DGMS", dgms)) for nm in names}
    layers = report.layers({"FP32": fp32, "DGMS": dgms}, by, keys)
    rep = {"rows": [{"label": "FP32"}, {"label": "DGMS"}], "layers": layers,
           "target": "neoverse-n2", "bits": 4}
    rep["floor"] = report.floor.rows(rep)
    assert [(r["kernel"], r["instruction"], r["peak"]) for r in rep["floor"]] == [
        ("q8m_conv2d_pw_w8_pre", "smmla", 32), ("q8m_conv2d_c3_b4_pre", "smmla", 32)]
    assert rep["floor"][0]["mmacs"] == report.floor.macs(stem) * 1e-6
    text = "\n".join(report.floor.lines(rep))
    # 115.6 M in 7.225 M: 16.0 a instruction, half the peak; 32.0 a cycle
    assert "| 1 | 3x3 | `q8m_conv2d_c3_b4_pre` | 115.6 | 7.225 | 16.0 | 32 (smmla) | 50% |" \
        " 3.612 | 32.0 |" in text
    assert "these 2 convs: 234 M multiply-adds in 14.6 M instructions" in text
    # the same layers on a dotprod core: sdot, 16
    n1 = dict(rep, target="neoverse-n1")
    dgms_n1 = [n.replace("q8m_", "q8_") for n in dgms]
    by = {("kernel", "DGMS", n.replace("q8m_", "q8_")): v for (_, lb, n), v in by.items()
          if lb == "DGMS"} | {k: v for k, v in by.items() if k[1] == "FP32"}
    keys["DGMS"] = {k.replace("q8m_", "q8_"): v for k, v in keys["DGMS"].items()}
    n1["layers"] = report.layers({"FP32": fp32, "DGMS": dgms_n1}, by, keys)
    assert {(r["instruction"], r["peak"]) for r in report.floor.rows(n1)} == {("sdot", 16)}
