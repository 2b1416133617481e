"""A small CNN for scikit-learn's 8x8 handwritten digits (1 channel, 10 classes)."""

from __future__ import annotations

from torch import nn


def _block(cin, cout, stride=1):
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=False)]


class DigitNet(nn.Module):
    """4 convs (8x8 -> 4x4 -> 2x2), global pooling, a Linear classifier."""

    def __init__(self, num_classes: int = 10, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_block(1, w), *_block(w, 2 * w), nn.MaxPool2d(2),
            *_block(2 * w, 2 * w), *_block(2 * w, 4 * w, stride=2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))
