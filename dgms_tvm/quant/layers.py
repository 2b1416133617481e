"""DGMS layers: a Conv2d / Linear whose weight goes through its layer's Gaussian mixture.

They subclass the torch layers, so a converted model keeps its state-dict keys
(``conv.weight``, ``conv.bias``) and gains ``conv.sub_distribution.{mu, sigma, pi_k, pi_zero,
sigma_zero, temperature}``: the official checkpoint layout. In training mode the forward pass
uses the soft weights; in eval mode the hard ones (argmax posterior), as the official code.
"""

from __future__ import annotations

import torch
from torch import nn

from .gmm import GaussianMixture


class _DGMSMixin:
    sub_distribution: GaussianMixture
    bits: int

    def _init_mixture(self, bits: int, init: str) -> None:
        self.bits = bits
        self.sub_distribution = GaussianMixture(1 << bits).to(self.weight.device)
        if init not in ("kmeans", "empirical", "none"):
            raise ValueError(f"unknown init {init!r} (kmeans, empirical, none)")
        if init != "none":
            self.sub_distribution.init_kmeans(self.weight, empirical=init == "empirical")

    def quantized_weight(self) -> torch.Tensor:
        """Soft weights while training, hard (argmax posterior) weights in eval mode."""
        if self.training:
            return self.sub_distribution.soft_weights(self.weight)
        with torch.no_grad():
            return self.sub_distribution.hard_weights(self.weight)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={self.bits}"


class DGMSConv2d(_DGMSMixin, nn.Conv2d):
    """A Conv2d whose weight is DGMS-quantized."""

    @classmethod
    def wrap(cls, conv: nn.Conv2d, bits: int, init: str = "kmeans") -> DGMSConv2d:
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                  conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                  conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
        new.load_state_dict(conv.state_dict())
        new._init_mixture(bits, init)
        return new

    def forward(self, x):
        return self._conv_forward(x, self.quantized_weight(), self.bias)

    def plain(self) -> nn.Conv2d:
        """An ordinary Conv2d holding the hard-quantized weight."""
        out = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                        self.padding, self.dilation, self.groups, self.bias is not None,
                        self.padding_mode, device=self.weight.device)
        with torch.no_grad():
            out.weight.copy_(self.sub_distribution.hard_weights(self.weight))
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out


class DGMSLinear(_DGMSMixin, nn.Linear):
    """A Linear whose weight is DGMS-quantized (optional in DGMS: the classifier)."""

    @classmethod
    def wrap(cls, lin: nn.Linear, bits: int, init: str = "kmeans") -> DGMSLinear:
        new = cls(lin.in_features, lin.out_features, lin.bias is not None,
                  device=lin.weight.device, dtype=lin.weight.dtype)
        new.load_state_dict(lin.state_dict())
        new._init_mixture(bits, init)
        return new

    def forward(self, x):
        return nn.functional.linear(x, self.quantized_weight(), self.bias)

    def plain(self) -> nn.Linear:
        out = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                        device=self.weight.device)
        with torch.no_grad():
            out.weight.copy_(self.sub_distribution.hard_weights(self.weight))
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out


DGMS_LAYERS = (DGMSConv2d, DGMSLinear)
