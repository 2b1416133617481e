"""convert / export / freeze, the official checkpoint import, and bad input."""

import numpy as np
import pytest
import torch
from torch import nn

from dgms_tvm.errors import UserError
from dgms_tvm.format import pack_indices, unpack_indices
from dgms_tvm.quant import (
    DGMSConv2d,
    DGMSLinear,
    convert,
    dgms_layers,
    export,
    freeze,
    load_official_checkpoint,
)
from dgms_tvm.zoo import DigitNet


def _net(seed=0):
    torch.manual_seed(seed)
    return DigitNet(width=8).eval()


def test_convert_wraps_every_conv_but_the_first():
    m = convert(_net(), 4)
    layers = dgms_layers(m)
    assert list(layers) == ["features.3", "features.7", "features.10"]
    assert all(isinstance(v, DGMSConv2d) and v.bits == 4 for v in layers.values())
    assert isinstance(m.features[0], nn.Conv2d) and not isinstance(m.features[0], DGMSConv2d)
    m2 = convert(_net(), 3, include_first=True, include_linear=True)
    assert len(dgms_layers(m2)) == 5 and isinstance(m2.fc, DGMSLinear)
    keys = m.state_dict().keys()
    for k in ("mu", "sigma", "pi_k", "pi_zero", "sigma_zero", "temperature"):
        assert f"features.3.sub_distribution.{k}" in keys
    assert m.features[3].sub_distribution.mu.shape == (15,)


def test_eval_mode_uses_hard_weights_and_export_round_trips():
    m = convert(_net(), 3)
    x = torch.randn(4, 1, 8, 8)
    m.eval()
    ex = export(m)
    with torch.no_grad():
        torch.testing.assert_close(ex.model(x), m(x), rtol=0, atol=0)
    for name, cw in ex.layers.items():
        layer = dict(m.named_modules())[name.rsplit(".", 1)[0]]
        hard = layer.sub_distribution.hard_weights(layer.weight).detach().numpy()
        plain_w = dict(ex.model.named_parameters())[name].detach().numpy()
        np.testing.assert_array_equal(cw.dense(), hard)  # packing loses nothing
        np.testing.assert_array_equal(plain_w, hard)
        idx = cw.indices().reshape(cw.shape[0], -1)
        np.testing.assert_array_equal(unpack_indices(pack_indices(idx, cw.bits), cw.bits,
                                                     idx.shape[1]), idx)
        assert cw.codebook[0] == 0 and cw.bits == 3
        assert cw.sparsity() == pytest.approx(float(np.mean(hard == 0)))
    assert not dgms_layers(ex.model) and not dgms_layers(freeze(m))


def test_training_mode_uses_soft_weights():
    m = convert(_net(), 2)
    layer = m.features[3]
    layer.train()
    soft = layer.quantized_weight()
    assert soft.requires_grad
    layer.eval()
    hard = layer.quantized_weight()
    assert not torch.equal(soft.detach(), hard)
    assert len(torch.unique(hard)) <= 4


def _official_checkpoint(seed=0, bits=2, wrap=True, prefix="module."):
    """Build an official-format checkpoint from the documented keys only."""
    torch.manual_seed(seed)
    net = _net(seed)
    sd = {}
    for name, t in net.state_dict().items():
        sd[prefix + name] = t.clone()
    k = (1 << bits) - 1
    for layer in ("features.3", "features.7", "features.10"):
        p = f"{prefix}{layer}.sub_distribution."
        sd[p + "mu"] = torch.linspace(-0.3, 0.3, k)
        sd[p + "sigma"] = torch.full((k,), 0.05)
        sd[p + "pi_k"] = torch.full((k,), 0.2)
        sd[p + "pi_zero"] = torch.tensor([0.4])
        sd[p + "sigma_zero"] = torch.tensor([0.02])
        sd[p + "temperature"] = torch.tensor([0.01])
    return {"epoch": 59, "state_dict": sd, "bits": bits, "CR": 20.0} if wrap else sd


def _expected_hard(latent, mu, sigma, pi_k, pi_zero, sigma_zero):
    """Independent NumPy: argmax of pi_k N(w|mu_k, sigma_k^2) with the zero component."""
    means = np.concatenate([[0.0], mu])
    sd = np.concatenate([[sigma_zero], sigma])
    pi = np.abs(np.concatenate([[pi_zero], pi_k]))
    pi = pi / pi.sum()
    w = latent.astype(np.float64)[..., None]
    dens = pi * np.exp(-0.5 * ((w - means) / sd) ** 2) / sd
    return means[dens.argmax(-1)]


@pytest.mark.parametrize("wrap,prefix", [(True, "module."), (False, "")])
def test_official_checkpoint_imports_to_expected_weights(wrap, prefix):
    ckpt = _official_checkpoint(wrap=wrap, prefix=prefix)
    sd = ckpt["state_dict"] if wrap else ckpt
    m = load_official_checkpoint(_net(seed=1), ckpt)
    assert not m.training
    ex = export(m)
    assert set(ex.layers) == {"features.3.weight", "features.7.weight", "features.10.weight"}
    for name, cw in ex.layers.items():
        p = prefix + name.rsplit(".", 1)[0] + ".sub_distribution."
        want = _expected_hard(sd[prefix + name].numpy(), sd[p + "mu"].numpy(),
                              sd[p + "sigma"].numpy(), sd[p + "pi_k"].numpy(),
                              float(sd[p + "pi_zero"]), float(sd[p + "sigma_zero"]))
        np.testing.assert_allclose(cw.dense(), want, rtol=1e-6)
        assert cw.bits == 2
    # Non-quantized parameters come from the checkpoint too.
    torch.testing.assert_close(ex.model.fc.weight, sd[prefix + "fc.weight"])


def test_bad_input():
    with pytest.raises(UserError, match=r"bits must be an integer in 1..8"):
        convert(_net(), 9)
    with pytest.raises(UserError, match=r"bits must be an integer in 1..8"):
        convert(_net(), 0)
    with pytest.raises(UserError, match=r"no nn.Conv2d"):
        convert(nn.Sequential(nn.Linear(4, 4)), 4)
    with pytest.raises(UserError, match=r"no DGMS layers"):
        export(_net())
    ckpt = _official_checkpoint()
    del ckpt["state_dict"]["module.features.7.sub_distribution.sigma"]
    with pytest.raises(UserError, match=r"missing 1 key.*features.7.sub_distribution.sigma"):
        load_official_checkpoint(_net(), ckpt)
    ckpt = _official_checkpoint()
    ckpt["state_dict"]["module.features.3.weight"] = torch.zeros(3, 3)
    with pytest.raises(UserError, match=r"'features.3.weight' has shape"):
        load_official_checkpoint(_net(), ckpt)
    ckpt = _official_checkpoint()
    ckpt["bits"] = 4
    with pytest.raises(UserError, match=r"says bits=4"):
        load_official_checkpoint(_net(), ckpt)
    with pytest.raises(UserError, match=r"not a DGMS checkpoint"):
        load_official_checkpoint(_net(), _net().state_dict())
