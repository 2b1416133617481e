"""Real data that ships inside a package: scikit-learn's handwritten digits.

1797 grayscale 8x8 images, 10 classes. Split deterministically (stratified) into 80% train
and 20% test. Images are scaled to [0, 1] and normalised with the training mean and std.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch


@dataclasses.dataclass
class Split:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits(seed: int = 0, image_size: int = 8, channels: int = 1) -> Split:
    """Digits as NCHW float tensors, resized (bilinear) and channel-repeated for a model that
    wants ``channels x image_size x image_size`` input."""
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    d = _load()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    mean, std = xtr.mean(), xtr.std()
    out = []
    for a in (xtr, xte):
        t = torch.from_numpy((a - mean) / std)
        if image_size != 8:
            t = torch.nn.functional.interpolate(t, size=(image_size, image_size),
                                                mode="bilinear", align_corners=False)
        out.append(t.repeat(1, channels, 1, 1) if channels != 1 else t)
    return Split(out[0], torch.from_numpy(ytr), out[1], torch.from_numpy(yte))
