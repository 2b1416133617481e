"""Calibration inputs: the inputs a model is run on when it is compiled, to fix the scales of
the int8 values passed between layers (:mod:`dgms_tvm.passes.int8_chain`); the onnxruntime
int8 peers are calibrated on the same ones (:mod:`dgms_tvm.bench.ort_int8`)."""

from __future__ import annotations

import numpy as np

from .errors import UserError

#: How many inputs: the example and the ones drawn around it.
SAMPLES = 8


def samples(x: np.ndarray, count: int = SAMPLES, seed: int = 0) -> list[np.ndarray]:
    """``x`` and ``count - 1`` inputs drawn around it (``x`` plus normal noise of its own
    standard deviation, seeded)."""
    x = np.asarray(x, np.float32)
    rng = np.random.default_rng(seed)
    return [x] + [(x + rng.normal(scale=x.std() or 1.0, size=x.shape)).astype(np.float32)
                  for _ in range(count - 1)]


def given(arrays: list[np.ndarray], shape: tuple[int, ...], dtype: str) -> list[np.ndarray]:
    """A user's calibration inputs (``--calibration``) as inputs of ``shape``: each array one
    input, or a stack of them along a first axis; anything else is refused in one line."""
    out = []
    for a in arrays:
        a = np.asarray(a)
        if tuple(a.shape) == tuple(shape):
            out.append(a.astype(dtype))
        elif a.ndim == len(shape) + 1 and tuple(a.shape[1:]) == tuple(shape):
            out += [s.astype(dtype) for s in a]
        else:
            raise UserError(f"calibration input of shape {list(a.shape)}: the model's input "
                            f"is {list(shape)} (or stack several along a first axis)")
    if not out:
        raise UserError("no calibration inputs in the file")
    return out
