"""What the codebook lowering is told (policy) and what it reports (one record per layer)."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import UserError


@dataclasses.dataclass
class LayerRecord:
    """One conv2d / dense layer the lowering looked at.

    ``kernel`` is set when the layer was lowered; otherwise ``reason`` says why it stayed FP32.
    """

    name: str
    op: str
    shape: tuple[int, ...]
    bits: int | None = None
    codebook_entries: int | None = None
    sparsity: float | None = None
    scaled: bool = False
    kernel: str | None = None
    reason: str = ""

    @property
    def lowered(self) -> bool:
        return self.kernel is not None

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["shape"] = [int(v) for v in self.shape]
        d["lowered"] = self.lowered
        return d


@dataclasses.dataclass
class LoweringPolicy:
    """Inputs of the codebook lowering.

    Attributes
    ----------
    weights : dict
        Relax parameter name -> constant weight value.
    bits : int or None
        Widest codebook accepted from weight values (None: any supported width).
    declared : dict
        Layer name -> bits, for layers that metadata declares quantized: a mismatch there is
        an error, not a skip.
    names : dict
        Relax parameter name -> the layer's own name (``layer1.0.conv1.weight``).
    """

    weights: dict[str, np.ndarray]
    bits: int | None = None
    declared: dict[str, int] = dataclasses.field(default_factory=dict)
    names: dict[str, str] = dataclasses.field(default_factory=dict)

    def display_name(self, param: str) -> str:
        return self.names.get(param, param)

    @staticmethod
    def error(message: str) -> UserError:
        return UserError(message)
