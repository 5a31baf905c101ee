"""Unified Normalization: training forward (fluctuation smoothing, outlier filtration) against a float64
re-derivation step by step, and gradients by finite differences (its deploy fold: tests/passes/test_fold_un.py)."""
from __future__ import annotations

import copy
import math
import pytest
import torch

from archdsl.ops.unified_norm import UnifiedNorm


class SlowUN:
    """The paper's training rule kept in plain Python lists of float64 per-channel values."""

    def __init__(self, c, window, warmup, outlier, eps=1e-5, momentum=0.9):
        self.c, self.window, self.warmup, self.outlier = c, window, warmup, outlier
        self.eps, self.momentum = eps, momentum
        self.slots = [[0.0] * c for _ in range(window)]
        self.running = [1.0] * c
        self.step = 0
        self.skipped = 0

    def _mean_square(self, x, c):
        vals = x[:, c].reshape(-1).tolist()
        return sum(v * v for v in vals) / len(vals)

    def __call__(self, x, w, b):
        self.step += 1
        x2 = [self._mean_square(x, c) for c in range(self.c)]
        roots = [math.sqrt(v) for row in self.slots for v in row]
        mu = sum(roots) / len(roots)
        spread = sum((r - mu) ** 2 for r in roots) / (len(roots) - 1)
        slot = self.step % self.window
        self.slots[slot] = list(x2)
        skip = False
        if self.outlier and self.step >= self.warmup:
            for c in range(self.c):
                col = [row[c] for row in self.slots]
                arith = sum(col) / len(col)
                geo = math.exp(sum(math.log(v) for v in col) / len(col)) if min(col) > 0 else 0.0
                skip = skip or arith - geo > spread * self.window
            if skip:
                self.slots[slot] = list(self.running)
                self.skipped += 1
        if self.step <= self.window or self.step < self.warmup or skip:
            var = x2
        else:
            var = [math.exp(sum(math.log(row[c]) for row in self.slots) / self.window) for c in range(self.c)]
        self.running = [self.momentum * r + (1 - self.momentum) * v for r, v in zip(self.running, var)]
        out = torch.empty_like(x)
        for c in range(self.c):
            out[:, c] = float(w[c].detach()) * x[:, c] / math.sqrt(var[c] + self.eps) + float(b[c].detach())
        return out


def _batches(shape, steps, seed=0, outlier_at=None):
    g = torch.Generator().manual_seed(seed)
    for i in range(steps):
        scale = 1.0 + 0.5 * i % 3
        x = torch.randn(2, *shape, generator=g, dtype=torch.float64) * scale
        if i == outlier_at:
            x = x * 40.0
        yield x


@pytest.mark.parametrize("shape,window,warmup,outlier,outlier_at", [
    ((5, 7), 3, 2, False, None),
    ((3, 5, 7), 2, 0, False, None),
    ((4, 9), 3, 4, True, 6),
], ids=["tokens-1d", "image-2d", "outlier-filtration"])
def test_training_forward_matches_float64_rule(shape, window, warmup, outlier, outlier_at):
    c = shape[0]
    m = UnifiedNorm(c, window=window, warmup=warmup, outlier=outlier).double().train()
    with torch.no_grad():
        m.weight.add_(0.3 * torch.randn(c, dtype=torch.float64))
        m.bias.add_(0.3 * torch.randn(c, dtype=torch.float64))
    slow = SlowUN(c, window, warmup, outlier)
    for x in _batches(shape, 9, outlier_at=outlier_at):
        with torch.no_grad():
            y = m(x)
        torch.testing.assert_close(y, slow(x, m.weight, m.bias), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(m.running_var, torch.tensor(slow.running, dtype=torch.float64))
    assert int(m.skipped) == slow.skipped
    if outlier:
        assert slow.skipped >= 1  # the scaled batch was caught, else this case tests nothing


def test_smoothing_changes_the_output():
    """After warm-up the window's geometric mean, not the batch's own statistic, divides the input."""
    m = UnifiedNorm(3, window=2, warmup=0).double().train()
    xs = list(_batches((3, 8), 4))
    with torch.no_grad():
        for x in xs[:3]:
            m(x)
        y = m(xs[3])
    own = xs[3] / torch.sqrt((xs[3] ** 2).mean((0, 2), keepdim=True) + 1e-5)
    assert (y - own).abs().max() > 1e-3


def test_gradients_by_finite_differences():
    m = UnifiedNorm(3, window=2, warmup=0).double().train()
    with torch.no_grad():
        for x in _batches((3, 5), 3):
            m(x)  # past the window: the smoothed statistic is in use

    def f(x, w, b):
        fresh = copy.deepcopy(m)  # the forward updates buffers: every evaluation starts from the same state
        return torch.func.functional_call(fresh, {"weight": w, "bias": b}, (x,))

    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    w = (1 + 0.3 * torch.randn(3, dtype=torch.float64)).requires_grad_()
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x, w, b))
