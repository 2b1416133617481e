"""The recipes behind ``scripts/quantize.py`` and ``scripts/bench_digits.py``: train FP32 on
a packaged data set, DGMS-fine-tune at some widths, export."""

from __future__ import annotations

import copy
import dataclasses
import sys

import torch

from .. import zoo
from ..errors import UserError
from .convert import DGMSExport, check_quant_bits, convert, export
from .data import Split, load_digits
from .train import EpochLog, evaluate, fit

DATASETS = ("digits",)
#: Fine-tuning learning rate (one-cycle maximum). The official 2e-5 is for 60 ImageNet
#: epochs from a converged model; on digits, 1e-3 over a few epochs keeps the mixture stable
#: (1e-2 collapsed the 3- and 2-bit mixtures in our runs).
DGMS_LR = 1e-3
FP32_LR = 0.05


def digits_model(name: str) -> tuple[str, zoo.ZooEntry]:
    """The built-in architecture to train on digits (10 classes): ``digitnet``, or the 32x32
    variant of ``resnet18`` / ``mobilenetv2``."""
    entry = zoo.get_entry(name)
    if entry.num_classes != 10:
        small = f"{name}-32"
        if small not in zoo.MODELS:
            raise UserError(f"no 10-class variant of {name} for the digits data")
        print(f"note: training {small} (the 10-class 32x32 variant of {name}) on digits",
              file=sys.stderr)
        name, entry = small, zoo.MODELS[small]
    return name, entry


def load_data(data: str, entry: zoo.ZooEntry, seed: int = 0) -> Split:
    if data not in DATASETS:
        raise UserError(f"unknown data set {data!r}; available: {', '.join(DATASETS)}")
    return load_digits(seed, entry.image_size, entry.in_channels)


def pretrain(name: str, data: Split, epochs: int, seed: int = 0, quiet: bool = False):
    """A seeded FP32 model of the built-in architecture ``name``, trained ``epochs`` epochs."""
    torch.manual_seed(seed)
    model = zoo.MODELS[name].build()
    fit(model, data, epochs, FP32_LR, seed=seed, label="fp32", quiet=quiet)
    return model


@dataclasses.dataclass
class QuantResult:
    bits: int
    logs: list[EpochLog]
    exported: DGMSExport
    accuracy: float  # the exported (hard) model on the test split


def quantize(fp32_model, data: Split, bits: int, epochs: int, seed: int = 0,
             quiet: bool = False, **convert_kw) -> QuantResult:
    """Convert a copy of ``fp32_model`` at ``bits``, fine-tune ``epochs`` epochs, export."""
    bits = check_quant_bits(bits)
    model = convert(copy.deepcopy(fp32_model), bits, **convert_kw)
    logs = fit(model, data, epochs, DGMS_LR, seed=seed, label=f"dgms {bits}-bit", quiet=quiet)
    exported = export(model)
    return QuantResult(bits, logs, exported, evaluate(exported.model, data.x_test, data.y_test))
