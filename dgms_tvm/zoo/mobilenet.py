"""MobileNetV2 (Sandler et al. 2018), our own definition (torchvision's structure)."""

from __future__ import annotations

from torch import nn

# (expansion t, output channels c, repeats n, first stride s), from the paper's Table 2.
_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1)]


def _conv_bn(cin, cout, k, stride, groups=1, act=True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=False))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   _conv_bn(hidden, cout, 1, 1, act=False)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.conv(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """MobileNetV2, width 1.0. ``small=True`` is the 32x32 variant (stride-1 stem and first
    stride-2 stage, as CIFAR versions do)."""

    def __init__(self, num_classes: int = 1000, small: bool = False):
        super().__init__()
        layers = [_conv_bn(3, 32, 3, 1 if small else 2)]
        cin = 32
        for i, (t, c, n, s) in enumerate(_SETTINGS):
            for j in range(n):
                stride = s if j == 0 and not (small and i == 1) else 1
                layers.append(InvertedResidual(cin, c, stride, t))
                cin = c
        layers.append(_conv_bn(cin, 1280, 1, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))
