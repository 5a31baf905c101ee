"""Float64 building blocks of the ops' `reference` functions, shared by the op families.

A reference is the op written another way than its module (explicit loops over kernel offsets and token pairs,
textbook formulas, float64), so the registry tests check a module against arithmetic rather than against itself.
"""
from __future__ import annotations

import math

import torch


def kernel_offsets(ks):
    """Every offset of a kernel of size `ks` (a tuple), in row-major order: (0, 0), (0, 1), ..."""
    if not ks:
        yield ()
        return
    for i in range(ks[0]):
        for rest in kernel_offsets(ks[1:]):
            yield (i, *rest)


def ref_sigmoid(x):
    return 1.0 / (1.0 + torch.exp(-x))


def ref_act(name, x):
    """relu / silu / gelu (exact) by their formulas."""
    if name == "relu":
        return x * (x > 0)
    if name == "silu":
        return x * ref_sigmoid(x)
    if name == "gelu":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    raise ValueError(name)


def ref_softmax(t):
    e = torch.exp(t - t.amax(-1, keepdim=True))
    return e / e.sum(-1, keepdim=True)


def ref_linear(t, layer):
    """An nn.Linear's map on tokens t (..., C_in): t W^T + b."""
    y = t @ layer.weight.double().T
    return y + layer.bias.double() if layer.bias is not None else y


def ref_bn(bn, y):
    """BatchNorm written out: batch statistics in training mode, running statistics otherwise."""
    y = y.double()
    dims = [0] + list(range(2, y.dim()))
    shape = (1, -1) + (1,) * (y.dim() - 2)
    if bn.training or bn.running_mean is None:
        mean, var = y.mean(dims), y.var(dims, unbiased=False)
    else:
        mean, var = bn.running_mean.double(), bn.running_var.double()
    y = (y - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + bn.eps)
    return y * bn.weight.double().reshape(shape) + bn.bias.double().reshape(shape)


def ref_attention(q, k, v, heads, scale, bias=None):
    """softmax(Q K^T * scale + bias) V per head; q (B, Nq, C), k / v (B, Nk, C)."""
    d = q.shape[-1] // heads
    out = torch.empty_like(q)
    for h in range(heads):
        cols = slice(h * d, (h + 1) * d)
        scores = q[..., cols] @ k[..., cols].transpose(1, 2) * scale
        if bias is not None:
            scores = scores + bias[h]
        out[..., cols] = ref_softmax(scores) @ v[..., cols]
    return out


def ref_rel_bias(table, size):
    """(heads, N, N) relative position bias from a ((2s-1)..., heads) table, by a loop over position pairs."""
    table = table.double()
    positions = list(kernel_offsets(tuple(size)))
    bias = torch.empty(table.shape[1], len(positions), len(positions), dtype=torch.float64)
    for i, pi in enumerate(positions):
        for j, pj in enumerate(positions):
            row = 0
            for d, s in enumerate(size):
                row = row * (2 * s - 1) + (pi[d] - pj[d] + s - 1)
            bias[:, i, j] = table[row]
    return bias
