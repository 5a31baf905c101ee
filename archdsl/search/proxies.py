"""Zero-cost accuracy proxies, computed at initialisation on one batch (higher is better for each).

- synflow (Tanaka et al. 2020; as a NAS proxy, Abdelfattah et al. 2021): sum |theta * dR/dtheta| for
  R = sum of the network's output on an all-ones input, with every parameter replaced by its absolute value.
- naswot / jacob_cov (Mellor et al. 2021): log|det K_H| of the kernel of binary ReLU codes over a batch.
- grad_norm (Abdelfattah et al. 2021): the L2 norm of the loss gradient over all parameters.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def synflow(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model = copy.deepcopy(module).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    model.zero_grad()
    out = model(torch.ones_like(x, dtype=torch.float64)[:1])
    out.sum().backward()
    score = sum((p * p.grad).abs().sum().item() for p in model.parameters() if p.grad is not None)
    return float(torch.log1p(torch.tensor(score)).item())


def naswot(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    codes = []

    def hook(_, __, out):
        codes.append((out.detach().flatten(1) > 0).double())

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (nn.ReLU, nn.GELU, nn.SiLU, nn.Hardswish))]
    module.eval()
    with torch.no_grad():
        module(x)
    for h in handles:
        h.remove()
    if not codes:
        codes = [(x.flatten(1) > 0).double()]
    c = torch.cat(codes, 1)
    k = c @ c.t() + (1 - c) @ (1 - c).t()
    sign, logdet = torch.linalg.slogdet(k)
    return float(logdet.item()) if sign > 0 else 0.0


def grad_norm(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    module.train()
    module.zero_grad()
    nn.functional.cross_entropy(module(x), y).backward()
    total = sum(p.grad.pow(2).sum().item() for p in module.parameters() if p.grad is not None)
    module.zero_grad()
    return float(total ** 0.5)


PROXIES = {"synflow": synflow, "naswot": naswot, "jacob_cov": naswot, "grad_norm": grad_norm}
