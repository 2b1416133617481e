"""The onnxruntime peers for a real board: a folder to copy there and time by hand.

Through a tracker only TVM modules run, and onnxruntime is none, so a bench on a board
cannot measure the peers itself. Instead it writes ``peers/``: the model in ONNX (FP32 and
onnxruntime's int8 in each documented configuration, quantized here as on the emulated
cores), the bench's input, and ``time_peers.py``, which times each model with onnxruntime on
the board (``pip install onnxruntime`` there) and prints one line per model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SCRIPT = '''#!/usr/bin/env python3
"""Time each onnxruntime model in this folder on this machine: python3 time_peers.py [REPEAT]"""
import pathlib, statistics, sys, time
import numpy as np
import onnxruntime as ort

here = pathlib.Path(__file__).resolve().parent
repeat = int(sys.argv[1]) if len(sys.argv) > 1 else 10
x = np.load(here / "x.npy")
print(f"{'model':<28} {'median ms':>10} {'min ms':>9}  (onnxruntime {ort.__version__}, one thread)")
for path in sorted(here.glob("*.onnx")):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    sess.run(None, feed)
    ms = []
    for _ in range(repeat):
        t = time.perf_counter()
        sess.run(None, feed)
        ms.append(1e3 * (time.perf_counter() - t))
    print(f"{path.stem:<28} {statistics.median(ms):>10.2f} {min(ms):>9.2f}")
'''


def write_kit(onnx_fp32: bytes, x: np.ndarray, folder: Path) -> Path:
    """Write the peer models, the input and the timing script into ``folder``."""
    from . import ort_int8

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fp32.onnx").write_bytes(onnx_fp32)
    for config in ort_int8.CONFIGS:
        name = "int8-" + config.name.lower().replace(" ", "-")
        (folder / f"{name}.onnx").write_bytes(ort_int8.quantize(onnx_fp32, x, config))
    np.save(folder / "x.npy", np.ascontiguousarray(x))
    (folder / "time_peers.py").write_text(SCRIPT)
    return folder
