"""The Relax ops the lowering matches, and checks on their operands."""

from __future__ import annotations

import tvm
from tvm import relax

OP = {n: tvm.ir.Op.get(n) for n in ("relax.nn.conv2d", "relax.matmul", "relax.permute_dims",
                                      "relax.nn.batch_norm", "relax.add", "relax.nn.relu",
                                      "relax.clip", "relax.reshape")}
#: Weighted ops we recognise but have no codebook kernel for: reported, left in FP32.
UNSUPPORTED = {tvm.ir.Op.get(f"relax.nn.{n}") for n in
                ("conv1d", "conv3d", "conv1d_transpose", "conv2d_transpose")}


def static_shape(expr) -> tuple[int, ...] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None or ty.dtype != "float32":
        return None
    try:
        return tuple(int(d) for d in ty.shape)
    except TypeError:  # symbolic dimension
        return None


def float32_out(dtype) -> bool:
    """Importers leave out_dtype unset (None / "" / void) or float32."""
    return dtype is None or str(dtype) in ("", "void", "float32")
