"""Operands for one kernel run alone (per-layer tables, on a device or on the host)."""

from __future__ import annotations

import numpy as np


def random_inputs(func, seed: int = 0) -> list[np.ndarray]:
    """Operands for one kernel alone: integers over the full byte range, floats normal."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    rng = np.random.default_rng(seed)
    out = []
    for info in ArgInfo.from_prim_func(func):
        shape, dtype = [int(d) for d in info.shape], str(info.dtype)
        out.append(rng.integers(0, 256, shape).astype(dtype) if "int" in dtype
                   else rng.normal(size=shape).astype(dtype))
    return out
