"""Training loops: FP32 pre-training and DGMS fine-tuning (soft assignment), with progress."""

from __future__ import annotations

import dataclasses
import sys

import torch
from torch import nn

from .convert import dgms_layers
from .data import Split


@dataclasses.dataclass
class EpochLog:
    epoch: int
    loss: float
    accuracy: float  # test accuracy, hard weights for DGMS models (eval mode)
    sparsity: float | None = None


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    """Top-1 accuracy in eval mode (DGMS layers use their hard weights)."""
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
                  for i in range(0, len(x), batch))
    return correct / len(x)


@torch.no_grad()
def hard_sparsity(model: nn.Module) -> float:
    """Share of weights the hard assignment sends to the zero component."""
    zeros = total = 0
    for layer in dgms_layers(model).values():
        idx = layer.sub_distribution.hard_indices(layer.weight)
        zeros += int((idx == 0).sum())
        total += idx.numel()
    return zeros / max(total, 1)


def fit(model: nn.Module, data: Split, epochs: int, lr: float, batch: int = 64,
        seed: int = 0, label: str = "train", quiet: bool = False) -> list[EpochLog]:
    """SGD (momentum 0.9, weight decay 5e-4 on weights only) with a one-cycle schedule, as
    the official recipe; mixture parameters get no weight decay. Returns one log per epoch."""
    from tqdm import tqdm

    gen = torch.Generator().manual_seed(seed)
    mixture = [p for n, p in model.named_parameters() if ".sub_distribution." in n]
    ids = {id(p) for p in mixture}
    weights = [p for p in model.parameters() if id(p) not in ids]
    groups = [{"params": weights, "weight_decay": 5e-4}]
    if mixture:
        groups.append({"params": mixture, "weight_decay": 0.0})
    opt = torch.optim.SGD(groups, lr=lr, momentum=0.9)
    steps = epochs * -(-len(data.x_train) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1))
    logs = []
    is_dgms = bool(dgms_layers(model))
    bar = tqdm(total=steps, desc=label, file=sys.stderr, disable=quiet, leave=False)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(data.x_train), generator=gen)
        total = 0.0
        for i in range(0, len(perm), batch):
            sel = perm[i:i + batch]
            loss = nn.functional.cross_entropy(model(data.x_train[sel]), data.y_train[sel])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(sel)
            bar.update()
        log = EpochLog(epoch + 1, total / len(perm), evaluate(model, data.x_test, data.y_test),
                       hard_sparsity(model) if is_dgms else None)
        logs.append(log)
        if not quiet:
            extra = f", sparsity {log.sparsity:.1%}" if log.sparsity is not None else ""
            bar.write(f"{label} epoch {log.epoch}/{epochs}: loss {log.loss:.4f}, "
                      f"test accuracy {log.accuracy:.2%}{extra}", file=sys.stderr)
    bar.close()
    return logs
