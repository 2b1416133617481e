"""The onnxruntime int8 peers: its static quantization in each documented configuration.

onnxruntime's quantization guide names two data-type choices for activations and weights,
uint8 activations with int8 weights (U8S8) and int8 for both (S8S8), and two formats, QDQ
(QuantizeLinear / DequantizeLinear pairs that its graph optimiser fuses into int8 kernels)
and QOperator (QLinearConv and friends written out). Which one is fastest depends on the
platform: on x86, U8S8 is the form VNNI's ``vpdpbusd`` takes as is, and the guide warns that
S8S8 QOperator is slow there; on aarch64, MLAS has both. So a benchmark runs all four and
holds ours against the fastest (:func:`fastest`), each calibrated the same way (per-channel
weights, the same calibration inputs).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path

import numpy as np

from .. import calibration


@dataclasses.dataclass(frozen=True)
class Int8Config:
    """One onnxruntime static-quantization configuration."""

    activations: str  # "uint8" | "int8"; weights are int8 in both
    fmt: str  # "QDQ" | "QOperator"

    @property
    def name(self) -> str:
        return f"{'U8' if self.activations == 'uint8' else 'S8'}S8 {self.fmt}"


CONFIGS = tuple(Int8Config(a, f) for f in ("QDQ", "QOperator") for a in ("uint8", "int8"))


def quantize(onnx_model: bytes, x: np.ndarray, config: Int8Config, samples: int = 8,
             seed: int = 0) -> bytes:
    """onnxruntime's static int8 quantization of ``onnx_model`` in ``config`` (per-channel
    weights), calibrated on ``x`` and ``samples - 1`` inputs drawn around it."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    name = onnx.load_from_string(onnx_model).graph.input[0].name
    batches = calibration.samples(x, samples, seed)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {name: b}

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" advice on every call
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            src.write_bytes(onnx_model)

            def run(path):
                quantize_static(
                    str(path), str(dst), Reader(),
                    quant_format=QuantFormat.QDQ if config.fmt == "QDQ"
                    else QuantFormat.QOperator,
                    per_channel=True,
                    activation_type=QuantType.QUInt8 if config.activations == "uint8"
                    else QuantType.QInt8,
                    weight_type=QuantType.QInt8)

            try:
                run(src)
            except Exception:  # (e.g. a bias it cannot find as an initializer)
                # the guide's pre-processing (shape inference, constants folded), then again
                from onnxruntime.quantization.shape_inference import quant_pre_process

                pre = Path(tmp) / "pre.onnx"
                quant_pre_process(str(src), str(pre))
                run(pre)
            return dst.read_bytes()
    finally:
        root.setLevel(level)


def fastest(costs: dict[str, float]) -> str:
    """The configuration name with the lowest cost (time or instructions) in ``costs``."""
    return min(costs, key=costs.__getitem__)


#: Report labels: onnxruntime FP32 and its int8 in each documented configuration.
PEER_CONFIGS = {f"onnxruntime int8 {c.name} (peer)": c for c in CONFIGS}
PEERS = ("onnxruntime FP32 (peer)", *PEER_CONFIGS)
