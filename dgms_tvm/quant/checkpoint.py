"""Import a checkpoint written by the official DGMS code.

What its trainer saves is either a bare ``state_dict`` or a dict with ``epoch``,
``state_dict``, ``bits``, ``CR``, ...; keys may carry DataParallel's ``module.`` prefix. A
quantized layer ``L`` has ``L.weight`` (latent FP32), optionally ``L.bias``, and
``L.sub_distribution.{mu, sigma, pi_k, pi_zero, sigma_zero, temperature}`` (mu, sigma, pi_k
with K-1 entries, the others one). Indices are not stored: they are recomputed by the argmax
posterior, which is what the official code's eval mode does.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import UserError
from .convert import convert


def _state_dict(checkpoint) -> dict[str, torch.Tensor]:
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise UserError("checkpoint is neither a state_dict nor a dict holding 'state_dict'")
    if all(k.startswith("module.") for k in checkpoint):
        checkpoint = {k[len("module."):]: v for k, v in checkpoint.items()}
    return checkpoint


def load_official_checkpoint(model: nn.Module, checkpoint) -> nn.Module:
    """Convert ``model`` to DGMS as the checkpoint says, load it, and put it in eval mode.

    Parameters
    ----------
    model : nn.Module
        The plain architecture the checkpoint was trained on (changed in place).
    checkpoint : dict
        ``torch.load`` of the official trainer's file, or a bare state_dict.

    Returns
    -------
    nn.Module
        ``model`` in eval mode: its forward pass uses the hard-assigned weights, and
        :func:`dgms_tvm.quant.export` gives the codebooks.

    Raises
    ------
    UserError
        For a missing key, a mis-shaped tensor, or inconsistent mixture sizes.
    """
    sd = _state_dict(checkpoint)
    suffix = ".sub_distribution.mu"
    layers = sorted(k[: -len(suffix)] for k in sd if k.endswith(suffix))
    if not layers:
        raise UserError("checkpoint has no '*.sub_distribution.mu' key: not a DGMS checkpoint")
    sizes = {sd[f"{name}{suffix}"].numel() + 1 for name in layers}
    if len(sizes) != 1:
        raise UserError(f"layers have different mixture sizes {sorted(sizes)}")
    components = sizes.pop()
    bits = int(math.log2(components))
    if 1 << bits != components:
        raise UserError(f"mixture of {components} components is not 2**bits")
    declared = checkpoint.get("bits") if isinstance(checkpoint, dict) else None
    if declared is not None and int(declared) != bits:
        raise UserError(f"checkpoint says bits={declared} but its mixtures have {components} "
                        f"components ({bits} bits)")
    names = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    unknown = [n for n in layers if n not in names]
    if unknown:
        raise UserError(f"checkpoint quantizes layers the model does not have: {unknown[:3]}")
    convert(model, bits, layers=layers, init="none")
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    if missing:
        raise UserError(f"checkpoint is missing {len(missing)} key(s), e.g. {missing[0]!r}")
    for k, v in own.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise UserError(f"checkpoint key {k!r} has shape {list(sd[k].shape)}, the model "
                            f"expects {list(v.shape)}")
    model.load_state_dict({k: sd[k] for k in own})
    return model.eval()

