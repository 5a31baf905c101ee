"""Supervised training of one trial (the accuracy objective): data through torch.utils.data loaders, on the
recipe's device and precision, with per-epoch validation reports and checkpoints.

The learning rate and momentum follow the one-cycle policy (`one_cycle`: up from lr/25 to lr over `warmup`
epochs, then down to lr/250000, both halves cosines); they are a function of the step alone, so a resumed trial
needs only the step to continue the schedule.
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from archdsl.search.checkpoint import Checkpoint, rng_state, set_rng_state
from archdsl.search.loaders import loader
from archdsl.search.recipe import Recipe

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TrialFailed(Exception):
    """Training broke down (NaN loss, out of memory): the trial is failed with this message."""


def _autocast(device: str, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=DTYPES[precision])


def evaluate(module: nn.Module, x, y: torch.Tensor | None = None, batch: int = 512, device: str = "cpu",
             precision: str = "fp32", workers: int = 0) -> float:
    """Accuracy of `module` on tensors (x, y), a split (x a batch-indexed Dataset, y None) or a DataLoader."""
    module.eval()
    if y is not None:
        batches = ((x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch))
    elif isinstance(x, DataLoader):
        batches = x
    else:
        batches = loader(x, batch, shuffle=False, workers=workers, pin_memory=device.startswith("cuda"))
    correct, total = 0, 0
    with torch.inference_mode(), _autocast(device, precision):
        for xb, yb in batches:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            correct += (module(xb).argmax(1) == yb).sum().item()
            total += len(yb)
    return correct / max(1, total)


def _optimizer(module: nn.Module, r: Recipe):
    if r.optimizer == "sgd":
        return torch.optim.SGD(module.parameters(), lr=r.lr, momentum=0.9, nesterov=True, weight_decay=r.weight_decay)
    # foreach: one kernel per step for all parameters (on CPU torch defaults to a loop over them, ~10 % of a
    # small network's step)
    return torch.optim.AdamW(module.parameters(), lr=r.lr, weight_decay=r.weight_decay, foreach=True)


def _cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)


def one_cycle(step: int, total: int, warm: float, lr: float) -> tuple[float, float]:
    """(learning rate, momentum) at `step` of `total` under the one-cycle policy (torch's OneCycleLR with
    pct_start = warm / total): a cosine from lr/25 up to lr over `warm` steps, then down to lr/250000, while
    the momentum (Adam's beta1) goes 0.95 -> 0.85 -> 0.95."""
    end1 = warm - 1
    if step <= end1:
        pct = step / end1 if end1 > 0 else 1.0
        return _cos(lr / 25, lr, pct), _cos(0.95, 0.85, pct)
    pct = (step - end1) / max(1e-9, total - 1 - end1)
    return _cos(lr, lr / 25 / 1e4, pct), _cos(0.85, 0.95, pct)


def train(module: nn.Module, data, epochs: int | None = None, batch: int | None = None, lr: float | None = None,
          weight_decay: float | None = None, seed: int = 0, report: Callable[[int, float], bool] | None = None, *,
          recipe: Recipe | None = None, device: str = "cpu", checkpoint: Checkpoint | None = None,
          on_epoch: Callable[[dict], None] | None = None) -> list[float]:
    """Train on data.train, validating on data.val after each epoch; returns the validation accuracies.
    `report(epoch, acc)` returning True stops early (pruning); `on_epoch(stats)` gets the epoch's numbers
    (for the progress line); `checkpoint` saves every epoch and resumes from the last one saved."""
    given = {k: v for k, v in dict(epochs=epochs, batch=batch, lr=lr, weight_decay=weight_decay).items()
             if v is not None}
    r = recipe if recipe is not None else Recipe(**given)
    module.to(device)
    opt = _optimizer(module, r)
    scaler = torch.amp.GradScaler("cuda", enabled=r.precision == "fp16")
    cuda = device.startswith("cuda")
    train_loader = loader(data.train, r.batch, shuffle=True, seed=seed, workers=r.workers, pin_memory=cuda)
    # built once: with workers, a loader per epoch would start its worker processes again every epoch
    val_loader = loader(data.val, max(r.batch, 256), shuffle=False, workers=r.workers, pin_memory=cuda)
    steps = len(train_loader.sampler)
    total, warm = r.epochs * steps, r.warmup_epochs * steps
    loss_fn = nn.CrossEntropyLoss(label_smoothing=r.label_smoothing)
    history, start = [], 0
    state = checkpoint.load() if checkpoint is not None else None
    if state is not None:
        module.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if r.precision == "fp16" and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], device)
        start, history = state["epoch"], list(state["history"])
        for e, a in enumerate(history):  # the resumed epochs count for pruning as they did before the kill
            if report is not None and report(e, a):
                module.to("cpu")
                return history
    t_start = time.perf_counter()
    for epoch in range(start, r.epochs):
        train_loader.sampler.set_epoch(epoch)
        module.train()
        t0, seen, loss_sum = time.perf_counter(), 0, torch.zeros((), device=device)
        for i, (x, y) in enumerate(train_loader):
            lr, momentum = one_cycle(epoch * steps + i, total, warm, r.lr)
            for g in opt.param_groups:
                g["lr"] = lr
                if "betas" in g:
                    g["betas"] = (momentum, g["betas"][1])
                else:
                    g["momentum"] = momentum
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with _autocast(device, r.precision):
                loss = loss_fn(module(x).float(), y)
            if not cuda and not torch.isfinite(loss):  # on a GPU checked per epoch (no sync per step)
                raise TrialFailed(f"loss became {loss.item()} at epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if r.clip > 0:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(module.parameters(), r.clip)
            scaler.step(opt)
            scaler.update()
            loss_sum += loss.detach() * len(y)
            seen += len(y)
        mean_loss = loss_sum.item() / max(1, seen)
        if not math.isfinite(mean_loss):
            raise TrialFailed(f"loss became {mean_loss} at epoch {epoch}")
        seconds = time.perf_counter() - t0
        acc = evaluate(module, val_loader, device=device, precision=r.precision)
        history.append(acc)
        if checkpoint is not None:
            checkpoint.save({"model": module.state_dict(), "optimizer": opt.state_dict(),
                             "scaler": scaler.state_dict() if r.precision == "fp16" else {},
                             "step": (epoch + 1) * steps, "rng": rng_state(device), "epoch": epoch + 1,
                             "history": history})
        if on_epoch is not None:
            done = epoch + 1 - start
            per_epoch = (time.perf_counter() - t_start) / done
            on_epoch({"epoch": epoch + 1, "epochs": r.epochs, "loss": mean_loss, "val_accuracy": acc,
                      "images_per_s": seen / max(seconds, 1e-9), "eta_s": per_epoch * (r.epochs - epoch - 1)})
        if report is not None and report(epoch, acc):
            break
    module.to("cpu")
    return history
