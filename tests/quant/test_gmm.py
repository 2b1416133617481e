"""The mixture formulas against an independent NumPy computation, and their behaviour."""

import itertools
import math

import numpy as np
import pytest
import torch

from dgms_tvm.quant import GaussianMixture


def _mixture(seed=0, k=8):
    g = GaussianMixture(k)
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        g.mu.copy_(torch.tensor(np.sort(rng.normal(size=k - 1)), dtype=torch.float32))
        g.sigma.copy_(torch.tensor(rng.uniform(0.05, 0.3, k - 1), dtype=torch.float32))
        g.pi_k.copy_(torch.tensor(rng.uniform(-1, 1, k - 1), dtype=torch.float32))  # signs
        g.pi_zero.fill_(0.7)
        g.sigma_zero.fill_(0.1)
        g.temperature.fill_(0.05)
    return g


def _numpy_posterior(g, w):
    """r_k = pi_k N(w|mu_k, s_k^2) / (sum_j pi_j N(w|mu_j, s_j^2) + 1e-11), pi = |pi|/sum|pi|."""
    mu = np.concatenate([[0.0], g.mu.detach().double().numpy()])
    sd = np.abs(np.concatenate([g.sigma_zero.detach().double().numpy(),
                                g.sigma.detach().double().numpy()]))
    pi = np.abs(np.concatenate([g.pi_zero.detach().double().numpy(),
                                g.pi_k.detach().double().numpy()]))
    pi = pi / pi.sum()
    dens = np.exp(-0.5 * ((w[..., None] - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
    num = pi * dens
    return num / (num.sum(-1, keepdims=True) + 1e-11), mu


def test_posterior_and_soft_weights_match_numpy():
    g = _mixture()
    w = np.random.default_rng(1).normal(scale=0.8, size=(6, 5))
    r_ref, mu = _numpy_posterior(g, w)
    r = g.posterior(torch.tensor(w, dtype=torch.float32)).detach().double().numpy()
    np.testing.assert_allclose(r, r_ref, rtol=1e-4, atol=1e-6)
    tau = g.temperature.item()
    e = np.exp((r_ref - r_ref.max(-1, keepdims=True)) / tau)
    phi = e / e.sum(-1, keepdims=True)
    soft_ref = (phi[..., 1:] * mu[1:]).sum(-1)
    soft = g.soft_weights(torch.tensor(w, dtype=torch.float32)).detach().double().numpy()
    np.testing.assert_allclose(soft, soft_ref, rtol=1e-4, atol=1e-5)


def test_hard_assignment_is_argmax_posterior_not_nearest_mean():
    g = GaussianMixture(4)
    with torch.no_grad():
        # A wide, heavy component at 1.0 and a narrow, light one at 0.3.
        g.mu.copy_(torch.tensor([0.3, 1.0, -1.0]))
        g.sigma.copy_(torch.tensor([0.01, 0.8, 0.1]))
        g.pi_k.copy_(torch.tensor([0.05, 0.9, 0.05]))
        g.pi_zero.fill_(0.05)
        g.sigma_zero.fill_(0.01)
    w = torch.tensor([0.36])  # nearest mean: 0.3; largest posterior: the wide one at 1.0
    assert int(g.hard_indices(w)) == 2
    assert g.hard_weights(w).item() == 1.0
    r_ref, _ = _numpy_posterior(g, w.double().numpy())
    assert int(np.argmax(r_ref)) == 2


def test_zero_component_gives_exact_zeros():
    g = _mixture()
    w = torch.linspace(-0.02, 0.02, 11)
    assert (g.hard_indices(w) == 0).all()
    hw = g.hard_weights(w)
    assert (hw == 0).all() and hw.dtype == torch.float32


def test_gradients_reach_every_parameter():
    g = _mixture()
    w = torch.randn(50, requires_grad=True)
    (g.soft_weights(w) ** 2).sum().backward()
    for name in ("mu", "sigma", "pi_k", "pi_zero", "sigma_zero", "temperature"):
        grad = getattr(g, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_soft_weights_approach_hard_ones_as_temperature_falls():
    g = _mixture()
    w = torch.randn(2000) * 0.8
    hard = g.hard_weights(w)
    errs, close = [], []
    for tau in (1.0, 0.1, 0.01, 1e-3, 1e-5):
        with torch.no_grad():
            g.temperature.fill_(tau)
            diff = (g.soft_weights(w) - hard).abs()
        errs.append(float(diff.mean()))
        close.append(float((diff < 1e-4).float().mean()))
    assert all(a >= b for a, b in itertools.pairwise(errs))
    assert errs[-1] < 1e-2 * errs[0]
    assert close[0] < 0.05 and close[-1] > 0.99


def test_kmeans_init_follows_dgms():
    rng = np.random.default_rng(0)
    w = torch.tensor(rng.normal(size=(32, 16, 3, 3)), dtype=torch.float32)
    g = GaussianMixture(16)
    g.init_kmeans(w)
    assert g.means()[0] == 0 and len(set(g.mu.tolist())) == 15
    pis = torch.cat([g.pi_zero, g.pi_k])
    assert pis.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert g.temperature.item() == pytest.approx(0.01)
    assert (g.sigma > 0).all()
    g.init_kmeans(w, empirical=True)
    assert torch.allclose(g.sigma, torch.full_like(g.sigma, 0.01))
