"""The host benchmark (scripts/bench_x86.py) on the small digits model: every row is built,
checked against the others and timed, onnxruntime FP32 and static int8 beside them."""

from dgms_tvm import bench_local


def test_compare_reports_every_row():
    rep = bench_local.compare("digitnet", 4, repeat=1, number=1)
    assert list(rep["rows"]) == ["fp32 TVM default", "fp32 same kernels", "codebook 4-bit",
                                 "codebook 4-bit int8", "onnxruntime fp32",
                                 "onnxruntime int8"]
    assert rep["max_rel_err_between_builds"] < 1e-4
    assert 0 < rep["int8_rel_err_vs_exact"] < 0.1
    assert all(r["median_ms"] > 0 for r in rep["rows"].values())
    assert rep["rows"]["codebook 4-bit int8"]["lowered"] > 0
    text = bench_local.format_report(rep)
    assert "onnxruntime int8 / codebook int8" in text
