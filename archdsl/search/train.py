"""Short supervised training with per-epoch validation reports (the accuracy objective)."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from archdsl.errors import ArchError


class TrialFailed(Exception):
    """Training broke down (NaN loss, out of memory): the trial is failed with this message."""


def evaluate(module: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    module.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            correct += (module(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item()
    return correct / max(1, len(x))


def train(module: nn.Module, data, epochs: int = 20, batch: int = 128, lr: float = 1e-2,
          weight_decay: float = 1e-4, seed: int = 0,
          report: Callable[[int, float], bool] | None = None) -> list[float]:
    """AdamW with a one-cycle schedule; returns validation accuracy after each epoch. `report(epoch, acc)`
    returning True stops early (pruning)."""
    if epochs < 1:
        raise ArchError(f"accuracy(epochs={epochs}): train for one epoch at least")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(data.x_train) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.2)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    for epoch in range(epochs):
        module.train()
        order = torch.randperm(len(data.x_train), generator=gen)
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            loss = loss_fn(module(data.x_train[idx]), data.y_train[idx])
            if not torch.isfinite(loss):
                raise TrialFailed(f"loss became {loss.item()} at epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = evaluate(module, data.x_val, data.y_val)
        history.append(acc)
        if report is not None and report(epoch, acc):
            break
    return history
