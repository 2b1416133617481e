"""Random small graphs made of the blocks modern CNNs are made of, for the property test
(test_random_graphs.py): spatial sizes 1x1 to 57x57, channel counts that fill no group of 4,
8 or 16, groups, strides, dilations, odd and asymmetric paddings, squeeze-excite, channel
split / shuffle / concat, the activations beyond relu, LayerNorm + Linear over the channels,
upsampling, residuals; DGMS codebooks of 1 to 4 bits in every conv but the first. A case is
its seed: the same seed makes the same graph."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from dgms_tvm.quant import hard_quantize

ACTS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "hardswish": nn.Hardswish,
        "hardsigmoid": nn.Hardsigmoid, "sigmoid": nn.Sigmoid, "gelu": nn.GELU,
        "none": nn.Identity}


class Conv(nn.Module):
    """A conv with an asymmetric zero padding, a BatchNorm, an activation."""

    def __init__(self, cin, cout, k, stride, dilation, groups, pad, act):
        super().__init__()
        self.pad = pad  # (left, right, top, bottom)
        self.conv = nn.Conv2d(cin, cout, k, stride, 0, dilation, groups, bias=False)
        self.bn, self.act = nn.BatchNorm2d(cout), ACTS[act]()

    def forward(self, x):
        return self.act(self.bn(self.conv(F.pad(x, self.pad))))


class SE(nn.Module):
    def __init__(self, c, squeeze, gate):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
        self.gate = ACTS[gate]()

    def forward(self, x):
        return x * self.gate(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class Shuffle(nn.Module):
    """Split in two, one half through a 1x1 conv, concat, shuffle."""

    def __init__(self, c, act):
        super().__init__()
        self.half = c // 2
        self.conv = Conv(c - self.half, c - self.half, 1, 1, 1, 1, (0, 0, 0, 0), act)

    def forward(self, x):
        a, b = x[:, :self.half], x[:, self.half:]
        y = torch.cat((a, self.conv(b)), 1)
        n, c, h, w = y.shape
        if c % 2:
            return y
        return y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


class ChannelMLP(nn.Module):
    """LayerNorm and Linear over the channels of the NHWC tensor (ConvNeXt's MLP)."""

    def __init__(self, c, hidden, act):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(c), nn.Linear(c, hidden), nn.Linear(
            hidden, c)
        self.act = ACTS[act]()

    def forward(self, x):
        y = self.fc2(self.act(self.fc1(self.norm(x.permute(0, 2, 3, 1)))))
        return x + y.permute(0, 3, 1, 2)


class Residual(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


class Upsample(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def _channels(rng, lo=1, hi=70) -> int:
    return int(rng.integers(lo, hi))


def _conv(rng, cin, size):
    """A random conv from ``cin`` channels on a ``size`` map: (module, cout, new size)."""
    k = int(rng.choice([1, 3, 5])) if size >= 5 else int(rng.choice([1, 3]))
    dilation = int(rng.choice([1, 2])) if k > 1 and size >= 2 * k + 1 else 1
    stride = int(rng.choice([1, 2])) if size >= 4 else 1
    kind = rng.choice(["dense", "grouped", "depthwise"])
    if kind == "depthwise" and cin > 1:
        groups, cout = cin, cin
    elif kind == "grouped":
        groups = int(rng.choice([g for g in (2, 3, 4, 8, 16) if cin % g == 0] or [1]))
        per = int(rng.choice([1, 2, 4, 8]))
        cout = groups * max(1, per * _channels(rng, 1, 5))
    else:
        groups, cout = 1, _channels(rng)
    eff = (k - 1) * dilation
    before, after = (int(v) for v in rng.integers(0, eff + 1, 2)) if eff else (0, 0)
    pad = (before, after, before, after)  # (the map stays square)
    out = (size + before + after - eff - 1) // stride + 1
    if out < 1:
        pad, stride, out = (eff, eff, eff, eff), 1, size + eff
    act = str(rng.choice(list(ACTS)))
    return Conv(cin, cout, k, stride, dilation, groups, pad, act), cout, out


def random_model(seed: int) -> tuple[nn.Module, torch.Tensor, int]:
    """(model, input, codebook bits) of case ``seed``: a stem, 2 to 5 random blocks and a
    head (pool + Linear, or the map itself)."""
    rng = np.random.default_rng(seed)
    size = int(rng.choice([1, 2, 3, 5, 7, 8, 12, 17, 24, 31, 57]))
    shape = (1, 3, size, size)
    c = _channels(rng, 3, 24)
    layers = [Conv(3, c, 3 if size >= 3 else 1, 1, 1, 1, (1, 1, 1, 1) if size >= 3 else
                   (0, 0, 0, 0), "relu")]
    for _ in range(int(rng.integers(2, 6))):
        kind = rng.choice(["conv", "conv", "se", "shuffle", "mlp", "residual", "upsample"])
        if kind == "conv" or (kind == "upsample" and size > 16):
            m, c, size = _conv(rng, c, size)
        elif kind == "se":
            m = SE(c, max(1, c // int(rng.choice([2, 4, 8]))),
                   str(rng.choice(["sigmoid", "hardsigmoid"])))
        elif kind == "shuffle" and c >= 2:
            m = Shuffle(c, str(rng.choice(list(ACTS))))
        elif kind == "mlp":
            m = ChannelMLP(c, _channels(rng, 4, 90), str(rng.choice(["gelu", "relu"])))
        elif kind == "upsample":
            m, size = Upsample(), size * 2
        else:
            m = Residual(Conv(c, c, 3, 1, 1, 1, (1, 1, 1, 1), "relu"))
        layers.append(m)
    head = bool(rng.integers(0, 2))
    if head:
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, _channels(rng, 2, 1000))]
    model = nn.Sequential(*layers).eval()
    bits = int(rng.integers(1, 5))
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    hard_quantize(model, bits, skip=("first_conv",))
    return model, torch.randn(*shape, generator=g), bits
