"""How a trial trains: the arguments of `accuracy(...)`, checked once when the search section is read.

    maximize accuracy(epochs = 20, batch = 128, lr = 0.01, optimizer = adamw, weight_decay = 1e-4,
                      warmup = 2, label_smoothing = 0.1, clip = 1.0,
                      device = auto, precision = bf16, workers = 2)

- device: auto (the first GPU when there is one, else the CPU), cpu, cuda, or "cuda:N". A GPU asked for on a
  machine without one is an error before the study starts.
- precision: fp32, bf16 or fp16 mixed-precision training (autocast; fp16 with gradient scaling). On the CPU
  fp16 autocast is refused (slow and unsupported by many kernels); bf16 works.
- workers: data-loading processes (0: load in the training process).
- optimizer: adamw or sgd (Nesterov momentum); lr: the peak learning rate of the one-cycle policy; warmup:
  epochs of its rising half (default a fifth of the epochs; see train.one_cycle); label_smoothing in [0, 1);
  clip: the gradient-norm limit (0: none).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from archdsl.errors import ArchError, Span

WORDS = ("auto", "adamw", "sgd", "standard", "none")  # bare words the search section may use as values
OPTIMIZERS = ("adamw", "sgd")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Recipe:
    epochs: int = 10
    batch: int = 128
    lr: float = 1e-2
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    warmup: float | None = None  # epochs; None: a fifth of them
    label_smoothing: float = 0.0
    clip: float = 0.0
    device: str = "auto"
    precision: str = "fp32"
    workers: int = 0
    act_bits: int = 8  # int8 regions' activations: 7 bits lets fbgemm's kernels run exactly without VNNI

    @property
    def warmup_epochs(self) -> float:
        return self.epochs / 5 if self.warmup is None else self.warmup


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def from_args(args: dict, span: Span | None = None) -> Recipe:
    """A Recipe from accuracy(...)'s arguments, each checked for type and range (errors name the line)."""
    def bad(name, what):
        raise ArchError(f"accuracy({name} = {args[name]!r}): {what}", span)

    # epochs, batch, lr and weight_decay are checked with every objective's arguments (spec.ARG_RULES) before
    # this runs; the arguments only training has are checked here
    out = {name: args[name] for name in ("epochs", "batch") if name in args}
    out.update({name: float(args[name]) for name in ("lr", "weight_decay") if name in args})
    if "workers" in args:
        if not _is_int(args["workers"]) or not 0 <= args["workers"] <= 256:
            bad("workers", "give a whole number, 0 or more")
        out["workers"] = args["workers"]
    for name, closed in (("label_smoothing", True), ("clip", True), ("warmup", True)):
        if name in args:
            v = args[name]
            if not _is_num(v) or v < 0 or (v == 0 and not closed) or (name == "label_smoothing" and v >= 1):
                bad(name, f"give a number {'from 0' if closed else 'above 0'}"
                          + (" below 1" if name == "label_smoothing" else ""))
            out[name] = float(v)
    if "optimizer" in args:
        if args["optimizer"] not in OPTIMIZERS:
            bad("optimizer", "use adamw or sgd")
        out["optimizer"] = args["optimizer"]
    if "act_bits" in args:
        if args["act_bits"] not in (7, 8) or isinstance(args["act_bits"], bool):
            bad("act_bits", "give 8 (uint8 activations) or 7 (0..127, for int8 kernels on CPUs without VNNI)")
        out["act_bits"] = args["act_bits"]
    if "precision" in args:
        if args["precision"] not in PRECISIONS:
            bad("precision", "train in fp32, bf16 or fp16")
        out["precision"] = args["precision"]
    if "device" in args:
        v = args["device"]
        if not isinstance(v, str) or not (v in ("auto", "cpu", "cuda") or
                                          (v.startswith("cuda:") and v[5:].isdigit())):
            bad("device", 'use auto, cpu, cuda or "cuda:N"')
        out["device"] = v
    recipe = Recipe(**out)
    if recipe.warmup is not None and recipe.warmup >= recipe.epochs:
        raise ArchError(f"accuracy(warmup = {recipe.warmup:g}) must be below epochs = {recipe.epochs}", span)
    return recipe


def resolve_device(recipe: Recipe, span: Span | None = None, override: str | None = None) -> str:
    """The torch device a trial trains on; a GPU that is not there is an error naming the line."""
    import torch

    want = override or recipe.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(want[5:]) if ":" in want else 0
        if count == 0:
            raise ArchError(f"accuracy(device = {want}) asks for a GPU, and this machine has none that torch can use",
                            span, hint="use device = auto (the CPU when there is no GPU) or device = cpu, or "
                                       "install a CUDA build of torch")
        if index >= count:
            raise ArchError(f"accuracy(device = {want}): this machine has {count} GPU(s), cuda:0..cuda:{count - 1}",
                            span)
    if recipe.precision == "fp16" and not want.startswith("cuda"):
        raise ArchError("accuracy(precision = fp16) trains on a GPU only", span,
                        hint="use precision = bf16 on the CPU, or fp32")
    return want
