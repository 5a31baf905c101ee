"""Unified Normalization (UN; Yang et al. 2022, "Unified Normalization for Accelerating and Stabilizing
Transformers", hikvision-research/Unified-Normalization): a drop-in for LayerNorm whose deploy form is a fixed
per-channel affine map, so `fold_un` merges it into the linear / 1x1 conv beside it.

Facts taken from the paper and its official code (UN1d / UN2dFunction):
- no centring: each channel is divided by the root of its mean square over the batch and every token
  (position), ``x2 = mean_{n,l} x^2``, then scaled and shifted: ``y = w * x / sqrt(var + eps) + b``;
- fluctuation smoothing: after `warmup` training steps (and once the window is full), ``var`` is the
  geometric mean of the last `window` batches' x2, not the current batch's alone;
- outlier filtration (optional): when for some channel the window's arithmetic mean of x2 exceeds its
  geometric mean by more than ``window * var(sqrt(window's x2))``, the batch is an outlier: it is normalized
  by its own x2 and its window slot takes the running statistic instead;
- ``running_var = momentum * running_var + (1 - momentum) * var`` (momentum weighs the old value, 0.9);
- eval: ``y = w * x / sqrt(running_var + eps) + b``.
Gradients: autograd through the current batch's share of ``var`` (the window's older entries are constants).
The official code replaces that backward by its own "gradient compensation" (a moving average of the
gradient statistic); that part is not reproduced here.
"""
from __future__ import annotations

import torch
from torch import nn

from archdsl.ops.registry import Attr, op, positive


class UnifiedNorm(nn.Module):
    """UN over the channel axis (dim 1) of (N, C, *positions) tensors, statistics over batch and positions."""

    def __init__(self, channels, window=4, warmup=4000, outlier=False, eps=1e-5, momentum=0.9):
        super().__init__()
        self.window, self.warmup, self.outlier, self.eps, self.momentum = window, warmup, outlier, eps, momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("window_x2", torch.zeros(window, channels))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("skipped", torch.zeros((), dtype=torch.long))

    def _train_var(self, x):
        dims = [0, *range(2, x.dim())]
        x2 = (x * x).mean(dims)
        self.steps += 1
        step = int(self.steps)
        slot = step % self.window
        history = self.window_x2.clone()
        spread = torch.sqrt(history).var()  # the window before this batch, all channels pooled (as official)
        history[slot] = x2.detach()
        skip = False
        if self.outlier and step >= self.warmup:
            arith = history.mean(0)
            geo = torch.exp(torch.log(history).mean(0))
            skip = bool((arith - geo > spread * self.window).any())
        with torch.no_grad():
            self.window_x2.copy_(history)
            if skip:
                self.window_x2[slot] = self.running_var
                self.skipped += 1
        if step <= self.window or step < self.warmup or skip:
            var = x2
        else:
            # this batch's x2 stays in the graph; the older ones are constants
            logs = torch.log(self.window_x2.detach()).clone()
            logs[slot] = torch.log(x2)
            var = torch.exp(logs.mean(0))
        with torch.no_grad():
            self.running_var.mul_(self.momentum).add_((1 - self.momentum) * var.detach())
        return var

    def forward(self, x):
        var = self._train_var(x) if self.training else self.running_var
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * (self.weight / torch.sqrt(var + self.eps)).reshape(shape) + self.bias.reshape(shape)


def un_affine(state: dict, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, t) of an eval-mode UN, ``y = s * x + t``, in float64 from its state."""
    s = state["weight"].double() / torch.sqrt(state["running_var"].double() + eps)
    return s, state["bias"].double()


def _reference(m, x):
    """Eval mode, channel by channel from the formula (the registry tests run the op in eval)."""
    x = x.double()
    out = torch.empty_like(x)
    for c in range(x.shape[1]):
        rv = m.running_var[c].double()
        out[:, c] = m.weight[c].double() * x[:, c] / torch.sqrt(rv + m.eps) + m.bias[c].double()
    return out


def _window_check(v):
    return None if v >= 1 else "must be at least 1"


op("un",
   Attr("window", "int", 4, check=_window_check, doc="batches whose x2 the geometric mean smooths over"),
   Attr("warmup", "int", 4000, check=lambda v: None if v >= 0 else "must be zero or more",
        doc="training steps normalized by the batch's own statistics first"),
   Attr("outlier", "bool", False, doc="adaptive outlier filtration (the paper advises it for vision)"),
   Attr("eps", "float", 1e-5, check=positive),
   Attr("momentum", "float", 0.9, check=lambda v: None if 0.0 <= v < 1.0 else "must be in [0, 1)",
        doc="weight of the old running_var"),
   shape=lambda a, ins: tuple(ins[0]),
   params=lambda a, ins: 2 * ins[0][0],
   torch=lambda a, ins: (UnifiedNorm, dict(channels=ins[0][0], window=a.window, warmup=a.warmup,
                                           outlier=a.outlier, eps=a.eps, momentum=a.momentum)),
   reference=_reference, category="norm", precisions=("fp32",),
   doc="Unified Normalization (Yang et al. 2022): LayerNorm's replacement that divides by a smoothed running "
       "root-mean-square per channel; at deploy a fixed affine map folded into the next / previous linear by "
       "fold_un.",
   examples=(({}, [(5,)]), ({"window": 3, "warmup": 0}, [(4, 7)]), ({"outlier": True}, [(3, 5, 7)])))
