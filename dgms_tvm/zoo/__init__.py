"""Built-in models: ResNet-18 and MobileNetV2, DGMS hard-quantized, deterministic from a seed.

No pretrained weights can be downloaded here, so weights are a seeded He initialisation and
BatchNorm statistics are seeded too (so that folding BatchNorm changes the weights, as it does
for a trained model); every conv but the first is then hard-quantized to a per-layer k-means
codebook with the zero pinned (:func:`dgms_tvm.quant.hard_quantize`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ..errors import UserError
from ..format import CodebookWeight, check_bits
from .digitnet import DigitNet
from .mobilenet import MobileNetV2
from .resnet import ResNet18


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """A built-in model: how to build it and its input."""

    name: str
    build: Callable
    image_size: int
    num_classes: int
    description: str
    in_channels: int = 3


MODELS = {
    e.name: e
    for e in [
        ZooEntry("resnet18", lambda: ResNet18(1000), 224, 1000,
                 "ResNet-18, 224x224, ImageNet head"),
        ZooEntry("mobilenetv2", lambda: MobileNetV2(1000), 224, 1000,
                 "MobileNetV2 1.0, 224x224, ImageNet head"),
        ZooEntry("resnet18-32", lambda: ResNet18(10, small=True), 32, 10,
                 "ResNet-18, 32x32 (CIFAR stem), 10 classes: for tests"),
        ZooEntry("mobilenetv2-32", lambda: MobileNetV2(10, small=True), 32, 10,
                 "MobileNetV2 1.0, 32x32, 10 classes: for tests"),
        ZooEntry("digitnet", lambda: DigitNet(10), 8, 10,
                 "small CNN for the 8x8 handwritten digits (1 channel)", in_channels=1),
    ]
}


@dataclasses.dataclass
class BuiltModel:
    model: object  # torch.nn.Module, eval mode
    example_input: object  # torch.Tensor, (1, 3, S, S)
    codebooks: dict[str, CodebookWeight]  # weight name -> codebook (the quantized layers)
    entry: ZooEntry
    bits: int | None


def get_entry(name: str) -> ZooEntry:
    """The registry entry of a built-in model (UserError listing them if unknown)."""
    if name not in MODELS:
        raise UserError(f"unknown built-in model {name!r}; built-in models: {', '.join(MODELS)} "
                        "(or give a .onnx / .pt2 file)")
    return MODELS[name]


def build(name: str, bits: int | None = 4, seed: int = 0) -> BuiltModel:
    """Build a built-in model, hard-quantized at ``bits`` (None: FP32).

    Raises
    ------
    UserError
        For an unknown name (listing the known ones) or an unsupported width.
    """
    import torch

    entry = get_entry(name)
    if bits is not None:
        from ..format import FormatError

        try:
            check_bits(bits)
        except FormatError as err:
            raise UserError(str(err)) from None
    torch.manual_seed(seed)
    model = entry.build()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu",
                                              generator=gen)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 0.5 + 0.75)
    model.eval()
    codebooks = {}
    if bits is not None:
        from ..quant import hard_quantize

        codebooks = hard_quantize(model, bits)
    x = torch.randn(1, entry.in_channels, entry.image_size, entry.image_size, generator=gen)
    return BuiltModel(model, x, codebooks, entry, bits)
