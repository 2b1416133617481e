"""Convert a torch model to DGMS, and export a trained one to the compiler's format."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..format import SUPPORTED_BITS, CodebookWeight
from .layers import DGMS_LAYERS, DGMSConv2d, DGMSLinear


def check_quant_bits(bits) -> int:
    """DGMS trains any width 1..8 (K = 2**bits components)."""
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or not 1 <= bits <= 8:
        raise UserError(f"bits must be an integer in 1..8, got {bits!r}")
    return int(bits)


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def convert(model: nn.Module, bits: int = 4, include_first: bool = False,
            include_linear: bool = False, init: str = "kmeans",
            layers: list[str] | None = None) -> nn.Module:
    """Wrap the model's layers with DGMS layers, in place.

    Parameters
    ----------
    model : nn.Module
    bits : int
        1..8; each layer gets K = 2**bits mixture components, the pinned zero included.
    include_first : bool
        Also quantize the first Conv2d (DGMS leaves it FP32).
    include_linear : bool
        Also quantize every Linear (DGMS leaves the classifier FP32).
    init : str
        ``kmeans`` (the official default), ``empirical`` (every sigma 0.01) or ``none``.
    layers : list of str, optional
        Exactly these module names instead of the rules above.

    Returns
    -------
    nn.Module
        ``model`` itself, converted.
    """
    bits = check_quant_bits(bits)
    named = [(n, m) for n, m in model.named_modules()
             if isinstance(m, nn.Conv2d | nn.Linear) and not isinstance(m, DGMS_LAYERS)]
    convs = [n for n, m in named if isinstance(m, nn.Conv2d)]
    if not convs and layers is None:
        raise UserError(f"{type(model).__name__} has no nn.Conv2d layer to quantize")
    if layers is None:
        chosen = set(convs if include_first else convs[1:])
        if include_linear:
            chosen |= {n for n, m in named if isinstance(m, nn.Linear)}
    else:
        missing = set(layers) - {n for n, _ in named}
        if missing:
            raise UserError(f"no Conv2d/Linear named {sorted(missing)} in the model")
        chosen = set(layers)
    for name, mod in named:
        if name in chosen:
            cls = DGMSConv2d if isinstance(mod, nn.Conv2d) else DGMSLinear
            _set_module(model, name, cls.wrap(mod, bits, init))
    return model


def dgms_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Module name -> DGMS layer."""
    return {n: m for n, m in model.named_modules() if isinstance(m, DGMS_LAYERS)}


@dataclasses.dataclass
class DGMSExport:
    """A hard-quantized model and its codebook layers in the compiler's format.

    Attributes
    ----------
    model : nn.Module
        Plain torch model (no DGMS layers) whose quantized weights are exactly
        ``codebook[indices]``; eval mode.
    layers : dict
        Weight name (``layer1.0.conv1.weight``) -> :class:`~dgms_tvm.format.CodebookWeight`.
    """

    model: nn.Module
    layers: dict[str, CodebookWeight]

    @property
    def sparsity(self) -> float:
        """Share of zero weights over all quantized layers."""
        n = sum(cw.indices().size for cw in self.layers.values())
        return sum(cw.sparsity() * cw.indices().size for cw in self.layers.values()) / max(n, 1)

    def metadata(self) -> dict[str, int]:
        return {name: cw.bits for name, cw in self.layers.items()}

    def save_pt2(self, path: Path, example_input: torch.Tensor) -> None:
        """Save as a ``torch.export`` program with DGMS metadata (``scripts/compile.py``
        accepts it)."""
        from ..frontend import METADATA_FILE, metadata_json

        ep = torch.export.export(self.model.eval(), (example_input,))
        torch.export.save(ep, str(path), extra_files={METADATA_FILE: metadata_json(
            self.metadata())})

    def save_onnx(self, path: Path, example_input: torch.Tensor) -> None:
        """Save as ONNX with DGMS metadata. BatchNorm is kept as its own node, so weights
        keep their names (the metadata refers to them) and their exact codebook values."""
        from ..frontend import onnx_bytes

        Path(path).write_bytes(onnx_bytes(self.model, (example_input,), fold_batchnorm=False,
                                          metadata=self.metadata()))


def export_width(bits: int) -> int:
    """The packed width of a DGMS width: the smallest supported one that holds it."""
    return min(b for b in SUPPORTED_BITS if b >= bits)


@torch.no_grad()
def export(model: nn.Module) -> DGMSExport:
    """Hard-assign every DGMS layer (argmax posterior) and export.

    The returned model is a deep copy; ``model`` is not changed.
    """
    layers = dgms_layers(model)
    if not layers:
        raise UserError("the model has no DGMS layers: call dgms_tvm.quant.convert first")
    plain = copy.deepcopy(model).eval()
    out = {}
    for name, layer in layers.items():
        gmm = layer.sub_distribution
        idx = gmm.hard_indices(layer.weight).cpu().numpy()
        means = gmm.means().float().cpu().numpy()
        w = layer.weight
        out[f"{name}.weight"] = CodebookWeight.from_indices(
            idx.reshape(w.shape[0], -1), means, export_width(layer.bits), shape=tuple(w.shape))
        _set_module(plain, name, layers[name].plain().eval())
    return DGMSExport(plain, out)


def freeze(model: nn.Module) -> nn.Module:
    """The hard-quantized plain model (``export(model).model``)."""
    return export(model).model
