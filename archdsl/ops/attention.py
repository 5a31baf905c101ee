"""Attention token mixers over the positions of a feature map: mhsa, relattn (relative position bias), cvtattn
(convolutional projections); Swin's window attention is in window_attention.py.

The tokens are the spatial positions of a (C, H, W) / (C, L) input (a (C,) vector is one token) and the
features are the C channels, as in the attention token mixer of MetaFormer / CAFormer (Yu et al. 2022). MACs
count linear / matmul MACs only: attention over N tokens with C channels costs 3NC^2 (qkv) + N^2C (QK^T) +
N^2C (AV) + NC^2 (output projection); softmax is elementwise and not counted.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.conv import conv_reference
from archdsl.ops.references import ref_attention, ref_bn, ref_linear, ref_rel_bias
from archdsl.ops.registry import Attr, op, positive, probability
from archdsl.ops.shapes import attention_macs, conv_out, need_heads, need_spatial, numel


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


def _reference(m, x):
    """softmax(Q K^T / sqrt(d)) V per head, written out in float64 (eval: no dropout)."""
    x = x.double()
    n, c = x.shape[:2]
    tokens = x.reshape(n, c, -1).transpose(1, 2)
    q, k, v = ref_linear(tokens, m.qkv).split(c, dim=-1)
    out = ref_attention(q, k, v, m.heads, 1 / math.sqrt(c // m.heads))
    return ref_linear(out, m.proj).transpose(1, 2).reshape(x.shape)


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


def rel_table_size(size):
    return math.prod(2 * s - 1 for s in size)


def rel_index(size):
    """(N, N) index into a relative position table with prod(2s-1) rows, N = prod(size) (Swin's
    relative_position_index, generalized to any number of dims): row-major offsets (query - key + s - 1)."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(s) for s in size], indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]
    index = torch.zeros(rel.shape[1:], dtype=torch.long)
    for d, s in enumerate(size):
        index = index * (2 * s - 1) + rel[d] + s - 1
    return index


# ---------------------------------------------------------------------------------------------- relattn
# Global multi-head self-attention with a learnable relative position bias per head (Swin's bias table and
# index, Liu et al. 2021; timm swin_transformer.py `WindowAttention` with the window = the whole input;
# also CoAtNet / MOAT's "2d_multi_head" embedding). Table ((2H-1)(2W-1), heads), trunc_normal(std=.02).


class RelAttn(nn.Module):
    """softmax(Q K^T / sqrt(d) + B[rel_index]) V over the positions of a grid of `size` (timm names)."""

    _emit_deps = (rel_index,)

    def __init__(self, dim, heads, size, qkv_bias=True, rel_pos=True):
        super().__init__()
        self.heads, self.size = heads, tuple(size)
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if rel_pos:
            table = math.prod(2 * s - 1 for s in self.size)
            self.rel_table = nn.Parameter(nn.init.trunc_normal_(torch.zeros(table, heads), std=0.02))
            self.register_buffer("rel_index", rel_index(self.size), persistent=False)
        else:
            self.rel_table = None

    def attend(self, t, mask=None):
        """Attention among tokens t (B, N, C), N = prod(size); `mask` (windows, N, N) is added to the scores of
        each group of `windows` consecutive token sets (Swin's shifted-window mask)."""
        b, n, c = t.shape
        q, k, v = self.qkv(t).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q * self.scale) @ k.transpose(-2, -1)  # (B, heads, N, N)
        if self.rel_table is not None:
            scores = scores + self.rel_table[self.rel_index].permute(2, 0, 1)
        if mask is not None:
            scores = (scores.view(-1, mask.shape[0], self.heads, n, n) + mask[:, None]).view(b, self.heads, n, n)
        out = scores.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))

    def forward(self, x):
        n, c = x.shape[:2]
        return self.attend(x.reshape(n, c, -1).transpose(1, 2)).transpose(1, 2).reshape(x.shape)


def _relattn_shape(a, ins):
    need_spatial("relattn", ins[0], (1, 2))
    need_heads("relattn", ins[0][0], a.heads, ins[0])
    return tuple(ins[0])


def attn_params(c, heads, size, a):
    return 4 * c * c + (3 * c if a.qkv_bias else 0) + c + (rel_table_size(size) * heads if a.rel_pos else 0)


def ref_relattn_tokens(m, t):
    """A RelAttn module applied to float64 tokens (B, N, C)."""
    c = t.shape[-1]
    q, k, v = ref_linear(t, m.qkv).split(c, dim=-1)
    bias = ref_rel_bias(m.rel_table, m.size) if m.rel_table is not None else None
    return ref_linear(ref_attention(q, k, v, m.heads, (c // m.heads) ** -0.5, bias), m.proj)


def _relattn_reference(m, x):
    x = x.double()
    n, c = x.shape[:2]
    t = x.reshape(n, c, -1).transpose(1, 2)
    return ref_relattn_tokens(m, t).transpose(1, 2).reshape(x.shape)


def attn_attrs():
    return (Attr("heads", "int", None, check=positive, doc="default: C/32 when 32 divides C, else 1"),
            Attr("qkv_bias", "bool", True), Attr("rel_pos", "bool", True, doc="learnable relative position bias"))


op("relattn", *attn_attrs(),
   shape=_relattn_shape,
   params=lambda a, ins: attn_params(ins[0][0], need_heads("relattn", ins[0][0], a.heads, ins[0]), ins[0][1:], a),
   macs=lambda a, ins, out: attention_macs(numel(ins[0][1:]), numel(ins[0][1:]), ins[0][0]),
   torch=lambda a, ins: (RelAttn, dict(dim=ins[0][0], heads=need_heads("relattn", ins[0][0], a.heads, ins[0]),
                                       size=tuple(ins[0][1:]), qkv_bias=a.qkv_bias, rel_pos=a.rel_pos)),
   reference=_relattn_reference, spatial_dims=(1, 2), category="mixer",
   doc="Global MHSA over all positions with a learnable relative position bias table per head "
       "((2H-1)(2W-1) x heads; (2L-1) x heads in 1-D).",
   examples=(({"heads": 2}, [(6, 3, 5)]), ({"heads": 3, "qkv_bias": False}, [(6, 7)]),
             ({"rel_pos": False, "heads": 1}, [(4, 2, 3)]), ({}, [(8, 4, 3)])))


# ---------------------------------------------------------------------------------------------- cvtattn
# CvT convolutional projection attention (Wu et al. 2021); microsoft/CvT lib/models/cls_cvt.py `Attention`
# with method 'dw_bn': q/k/v each = depthwise conv k=3 (padding 1, no bias) + BatchNorm, k and v with stride
# 2 (STRIDE_KV), then Linear q/k/v projections (QKV_BIAS True in the released CvT-13/21 configs) and an output
# Linear with bias. The official code scales the scores by dim_out**-0.5 (the full width, not the head width);
# we follow it.


class CvtAttn(nn.Module):
    """Attention whose queries / keys / values come from depthwise conv + BN projections (official names)."""

    def __init__(self, ndim, dim, heads, kv_stride=(2, 2), qkv_bias=True, kernel_size=3):
        super().__init__()
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[ndim - 1]
        bn = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[ndim - 1]
        self.heads = heads
        self.scale = dim ** -0.5
        strides = {"q": (1,) * ndim, "k": tuple(kv_stride), "v": tuple(kv_stride)}
        for name, stride in strides.items():
            proj = nn.Sequential()
            proj.add_module("conv", conv(dim, dim, kernel_size, stride=stride, padding=kernel_size // 2,
                                         groups=dim, bias=False))
            proj.add_module("bn", bn(dim))
            setattr(self, f"conv_proj_{name}", proj)
            setattr(self, f"proj_{name}", nn.Linear(dim, dim, bias=qkv_bias))
        self.proj = nn.Linear(dim, dim)

    def _tokens(self, name, x):
        t = getattr(self, f"conv_proj_{name}")(x).flatten(2).transpose(1, 2)  # (B, positions, C)
        b, n, c = t.shape
        return getattr(self, f"proj_{name}")(t).reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, x):
        n, c = x.shape[:2]
        q, k, v = self._tokens("q", x), self._tokens("k", x), self._tokens("v", x)
        out = ((q @ k.transpose(-2, -1)) * self.scale).softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(n, -1, c)).transpose(1, 2).reshape(x.shape)


def _kv_size(a, ins):
    return tuple(conv_out(s, 3, st, 1, 1, 1) for s, st in zip(ins[0][1:], a.kv_stride))


def _cvtattn_shape(a, ins):
    need_spatial("cvtattn", ins[0], (1, 2))
    need_heads("cvtattn", ins[0][0], a.heads, ins[0])
    return tuple(ins[0])


def _cvtattn_params(a, ins):
    c, k = ins[0][0], 3 ** (len(ins[0]) - 1)
    # 3 x (depthwise conv C*k + BN 2C + Linear C*C [+ C]) + output Linear C*C + C
    return 3 * (c * k + 2 * c + c * c + (c if a.qkv_bias else 0)) + c * c + c


def _cvtattn_macs(a, ins, out):
    c, k = ins[0][0], 3 ** (len(ins[0]) - 1)
    n_q, n_kv = numel(ins[0][1:]), numel(_kv_size(a, ins))
    # the depthwise projections (C*k per output position) plus the attention proper
    return (n_q + 2 * n_kv) * c * k + attention_macs(n_q, n_kv, c)


def _cvtattn_reference(m, x):
    x = x.double()
    n, c = x.shape[:2]

    def tokens(name):
        proj = getattr(m, f"conv_proj_{name}")
        t = ref_bn(proj.bn, conv_reference(proj.conv, x)).reshape(n, c, -1).transpose(1, 2)
        return ref_linear(t, getattr(m, f"proj_{name}"))

    out = ref_attention(tokens("q"), tokens("k"), tokens("v"), m.heads, c ** -0.5)
    return ref_linear(out, m.proj).transpose(1, 2).reshape(x.shape)


op("cvtattn", Attr("heads", "int", None, check=positive, doc="default: C/32 when 32 divides C, else 1"),
   Attr("kv_stride", "ints", 2, check=positive, doc="stride of the key / value conv projections"),
   Attr("qkv_bias", "bool", True),
   shape=_cvtattn_shape, params=_cvtattn_params, macs=_cvtattn_macs,
   torch=lambda a, ins: (CvtAttn, dict(ndim=len(ins[0]) - 1, dim=ins[0][0],
                                       heads=need_heads("cvtattn", ins[0][0], a.heads, ins[0]),
                                       kv_stride=a.kv_stride, qkv_bias=a.qkv_bias)),
   reference=_cvtattn_reference, spatial_dims=(1, 2), category="mixer",
   doc="CvT convolutional projection attention: depthwise conv3 + BN projections (k, v strided), linear "
       "q/k/v, MHSA, output projection.",
   examples=(({"heads": 2}, [(4, 7, 6)]), ({"heads": 3, "kv_stride": 1, "qkv_bias": False}, [(6, 9)]),
             ({"heads": 1, "kv_stride": [2, 3]}, [(3, 5, 7)]), ({"heads": 2}, [(4, 11)])))
