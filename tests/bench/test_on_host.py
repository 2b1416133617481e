"""The host benchmark (scripts/bench_x86.py) on the small digits model: every row is built,
checked against the others and timed, onnxruntime FP32 and static int8 beside them (each
documented int8 configuration: U8S8 / S8S8, QDQ / QOperator)."""

from dgms_tvm.bench import on_host


def test_compare_reports_every_row():
    rep = on_host.compare("digitnet", 4, repeat=1, number=1)
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
