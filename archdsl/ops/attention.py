"""Multi-head self-attention over the positions of a feature map: mhsa.

The tokens are the spatial positions of a (C, H, W) / (C, L) input (a (C,) vector is one token) and the
features are the C channels, as in the attention token mixer of MetaFormer / CAFormer (Yu et al. 2022).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.registry import Attr, op, positive, probability


class MultiHeadSelfAttention(nn.Module):
    """timm-style Attention (`qkv`: Linear C -> 3C, `proj`: Linear C -> C) on channels-first inputs."""

    def __init__(self, dim, heads=8, qkv_bias=False, proj_bias=True, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.heads = heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        n, c = x.shape[:2]
        tokens = x.reshape(n, c, -1).transpose(1, 2)  # (N, positions, C)
        length = tokens.shape[1]
        # qkv columns are [q | k | v], each split into heads: (3, N, heads, positions, head_dim)
        q, k, v = self.qkv(tokens).reshape(n, length, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(n, length, c)))
        return out.transpose(1, 2).reshape(x.shape)


def _heads(a, ins):
    c = ins[0][0]
    if a.head_dim is not None:
        if c % a.head_dim:
            raise ArchError(f"mhsa(): head_dim={a.head_dim} does not divide the {c} channels "
                            f"(input shape {list(ins[0])})", hint="choose a head_dim that divides the channels")
        return c // a.head_dim
    if c % a.heads:
        raise ArchError(f"mhsa(): heads={a.heads} does not divide the {c} channels (input shape {list(ins[0])})",
                        hint="choose a head count that divides the channels, or give head_dim")
    return a.heads


def _shape(a, ins):
    _heads(a, ins)
    return tuple(ins[0])


def _params(a, ins):
    c = ins[0][0]
    return 3 * c * c + (3 * c if a.qkv_bias else 0) + c * c + (c if a.proj_bias else 0)


def _macs(a, ins, out):
    # MetaFormer / CAFormer attention with N tokens and C channels: the qkv projection 3*N*C*C, the scores
    # Q K^T N*N*C, the weighted sum of V N*N*C, and the output projection N*C*C.
    c, n = ins[0][0], math.prod(ins[0][1:])
    return 3 * n * c * c + 2 * n * n * c + n * c * c


def _torch(a, ins):
    return MultiHeadSelfAttention, dict(dim=ins[0][0], heads=_heads(a, ins), qkv_bias=a.qkv_bias,
                                        proj_bias=a.proj_bias, attn_drop=a.attn_drop, proj_drop=a.proj_drop)


def _linear(t, layer):
    y = t @ layer.weight.double().T
    return y + layer.bias.double() if layer.bias is not None else y


def _reference(m, x):
    """softmax(Q K^T / sqrt(d)) V per head, written out in float64 (eval: no dropout)."""
    x = x.double()
    n, c = x.shape[:2]
    tokens = x.reshape(n, c, -1).transpose(1, 2)
    q, k, v = _linear(tokens, m.qkv).split(c, dim=-1)
    d = c // m.heads
    out = torch.empty_like(q)
    for h in range(m.heads):
        cols = slice(h * d, (h + 1) * d)
        scores = q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(d)
        weights = torch.exp(scores - scores.amax(-1, keepdim=True))
        weights = weights / weights.sum(-1, keepdim=True)
        out[..., cols] = weights @ v[..., cols]
    return _linear(out, m.proj).transpose(1, 2).reshape(x.shape)


op("mhsa",
   Attr("heads", "int", 8, check=positive),
   Attr("head_dim", "int", None, check=positive, doc="overrides heads: heads = C / head_dim"),
   Attr("qkv_bias", "bool", False), Attr("proj_bias", "bool", True),
   Attr("attn_drop", "float", 0.0, check=probability), Attr("proj_drop", "float", 0.0, check=probability),
   shape=_shape, params=_params, macs=_macs, torch=_torch, reference=_reference,
   doc="Multi-head self-attention among the spatial positions (tokens) of a feature map; features = channels.",
   examples=(({"heads": 3}, [(6, 5, 3)]), ({"head_dim": 4, "qkv_bias": True}, [(8, 7)]),
             ({"heads": 2, "proj_bias": False}, [(4,)]), ({}, [(16, 3, 3)]),
             ({"heads": 2, "attn_drop": 0.1, "proj_drop": 0.1}, [(4, 5)])))
