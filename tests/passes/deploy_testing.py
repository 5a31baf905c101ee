"""Shared helpers of the pass tests: build small models from .arch text, move their weights and BN statistics
off their init values (or train them a few SGD steps), and compare train vs deploy outputs in eval mode."""
from __future__ import annotations

import torch
from torch import nn

import archdsl
from archdsl.ir.graph import totals


def compile_text(text: str, dtype=torch.float64, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return archdsl.compile(text, **overrides).to(dtype)


def randomize(module, seed: int = 1):
    """Generic weights: every parameter perturbed, BN running statistics random (so folding is non-trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=m.running_mean.dtype))
                m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=m.running_var.dtype) + 0.5)
    return module


def example_input(module, batch: int = 3, seed: int = 2):
    G = module.archdsl_ir
    dtype = next((p.dtype for p in module.parameters()), torch.float64)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *G.nodes[G.graph["input"]]["shape"], generator=g).to(dtype)


def train_steps(module, steps: int = 3, lr: float = 0.05, batch: int = 4, seed: int = 3):
    """A few SGD steps on random data (moves weights, DCLS positions and BN running statistics)."""
    opt = torch.optim.SGD(module.parameters(), lr=lr, momentum=0.9)
    module.train()
    for i in range(steps):
        x = example_input(module, batch, seed + i)
        opt.zero_grad()
        module(x).square().mean().backward()
        opt.step()
    return module.eval()


def rel_err(a, b) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def check_deploy(module, select=None, tol=1e-10, x=None, **kw):
    """Deploy (eval), check the outputs agree and the IR's parameter count matches the module's; return it."""
    module.eval()
    deploy = module.deploy(select=select, **kw)
    x = example_input(module) if x is None else x
    with torch.no_grad():
        want, got = module(x), deploy(x)
    assert got.dtype == want.dtype
    err = rel_err(got, want)
    assert err < tol, f"deploy differs from train: relative error {err:.3g}"
    assert totals(deploy.archdsl_ir)["params"] == sum(p.numel() for p in deploy.parameters())
    return deploy


def ops(module) -> list[str]:
    G = module.archdsl_ir
    return [d["op"] for _, d in G.nodes(data=True) if d["op"] not in ("input", "output")]


def result(module, name):
    return next(r for r in module.pass_results if r.name == name)
