"""The per-layer Gaussian mixture of DGMS (``sub_distribution`` in the official code).

One mixture over all the weights of a layer: K = 2**bits components, component 0 the zero
component (mean pinned at exactly 0, its own ``pi_zero`` and ``sigma_zero``), components
1..K-1 with learnable ``mu``, ``sigma``, ``pi_k``; and a learnable temperature.

For a weight ``w`` (see ../shared/DGMS.md):

* mixing coefficients ``pi = |pi| / sum |pi|`` (zero component included);
* responsibilities ``r_k(w) = pi_k N(w | mu_k, sigma_k^2) / (sum_j pi_j N(w | mu_j, sigma_j^2)
  + 1e-11)``;
* soft assignment ``phi_k(w) = softmax_k(r_k(w) / tau)`` and the weight used in training
  ``w~ = sum_{k>=1} phi_k(w) mu_k`` (the zero component contributes 0);
* hard assignment ``k* = argmax_k r_k(w)``, deployed weight ``mu_{k*}`` (0 for k* = 0): the
  largest posterior, not the nearest mean.

Device-agnostic: everything is plain torch, so it runs on CPU or GPU (the official code is
CUDA-only).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

EPS = 1e-11
#: The official default initial temperature.
TAU_INIT = 0.01


class GaussianMixture(nn.Module):
    """Parameters and formulas of one layer's mixture. State-dict keys follow the official
    code: ``mu``, ``sigma``, ``pi_k`` (K-1 entries each), ``pi_zero``, ``sigma_zero``,
    ``temperature`` (one each)."""

    def __init__(self, components: int):
        super().__init__()
        if components < 2:
            raise ValueError("a DGMS mixture needs at least 2 components (zero + one)")
        k = components - 1
        self.mu = nn.Parameter(torch.zeros(k))
        self.sigma = nn.Parameter(torch.full((k,), 0.01))
        self.pi_k = nn.Parameter(torch.full((k,), 1.0 / components))
        self.pi_zero = nn.Parameter(torch.full((1,), 1.0 / components))
        self.sigma_zero = nn.Parameter(torch.full((1,), 0.01))
        self.temperature = nn.Parameter(torch.full((1,), TAU_INIT))

    @property
    def components(self) -> int:
        return self.mu.numel() + 1

    # -- initialisation --------------------------------------------------------------------
    @torch.no_grad()
    def init_kmeans(self, weight: torch.Tensor, empirical: bool = False) -> None:
        """k-means (K clusters) on the flat weights; the centre nearest 0 becomes the zero
        component. pi = cluster shares; sigma = within-cluster std (0.01 if ``empirical``)."""
        from .hard import kmeans_1d

        flat = weight.detach().double().cpu().numpy().ravel()
        centres, assign = kmeans_1d(flat, self.components)
        zero = int(np.argmin(np.abs(centres)))
        order = [zero] + [i for i in range(centres.size) if i != zero]
        shares = np.bincount(assign, minlength=centres.size) / flat.size
        stds = np.array([flat[assign == i].std() if np.any(assign == i) else 0.0
                         for i in range(centres.size)])
        stds = np.maximum(stds, 1e-4) if not empirical else np.full(centres.size, 0.01)
        # Fewer distinct weights than components: pad with copies spread around the largest.
        pad = self.components - centres.size
        mu = np.concatenate([centres[order[1:]], centres.max() * (1 + np.arange(1, pad + 1))])
        sig = np.concatenate([stds[order[1:]], np.full(pad, stds.mean())])
        pis = np.concatenate([shares[order[1:]], np.full(pad, 1e-6)])
        dev = self.mu.device
        self.mu.copy_(torch.as_tensor(mu, dtype=torch.float32, device=dev))
        self.sigma.copy_(torch.as_tensor(sig, dtype=torch.float32, device=dev))
        self.pi_k.copy_(torch.as_tensor(pis, dtype=torch.float32, device=dev))
        self.pi_zero.fill_(float(shares[zero]))
        self.sigma_zero.fill_(float(stds[zero]))
        self.temperature.fill_(TAU_INIT)

    # -- formulas --------------------------------------------------------------------------
    def means(self) -> torch.Tensor:
        """All K means, the pinned zero first."""
        return torch.cat([self.mu.new_zeros(1), self.mu])

    def posterior(self, w: torch.Tensor) -> torch.Tensor:
        """Responsibilities ``r_k(w)``, shape ``w.shape + (K,)``; component 0 is the zero."""
        pis = torch.cat([self.pi_zero, self.pi_k]).abs()
        pis = pis / pis.sum()
        sig = torch.cat([self.sigma_zero, self.sigma]).abs()
        d = w.unsqueeze(-1) - self.means()
        dens = torch.exp(-0.5 * (d / sig) ** 2) / (sig * math.sqrt(2 * math.pi))
        weighted = pis * dens
        return weighted / (weighted.sum(-1, keepdim=True) + EPS)

    def soft_assignment(self, w: torch.Tensor) -> torch.Tensor:
        """``phi_k(w) = softmax_k(r_k(w) / tau)``."""
        return torch.softmax(self.posterior(w) / self.temperature, dim=-1)

    def soft_weights(self, w: torch.Tensor) -> torch.Tensor:
        """``w~ = sum_{k>=1} phi_k(w) mu_k``."""
        return (self.soft_assignment(w)[..., 1:] * self.mu).sum(-1)

    def hard_indices(self, w: torch.Tensor) -> torch.Tensor:
        """``argmax_k r_k(w)`` (0 = the zero component)."""
        return self.posterior(w).argmax(-1)

    def hard_weights(self, w: torch.Tensor) -> torch.Tensor:
        """``mu_{k*}`` (exactly 0 where the zero component wins)."""
        return self.means()[self.hard_indices(w)]
