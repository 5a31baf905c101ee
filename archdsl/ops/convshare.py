"""ConvShareViT attention (Ibadulla, Chen & Reyes-Aldasoro 2025, "ConvShareViT: Enhancing Vision Transformers with
Convolutional Attention Mechanisms for Free-Space Optical Accelerators", arXiv 2504.11517): multi-head
self-attention over the positions whose q, k, v and output projections are depthwise convolutions with one kernel
shared by every channel (the operation a 4f optical system performs), instead of C x C linear layers.

No official code was available to read; from the paper's abstract: each of the four linear layers of MHSA becomes
a depthwise k^d conv whose weights are shared across the channels (here: one kernel and one bias per projection),
attention is the usual softmax(q k^T / sqrt(d)) v per head over all positions. The convs here are same-padded so
the op keeps its input's shape (a token mixer); the paper's valid-padded variant, which shrinks the grid, is not
built.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.ops.references import kernel_offsets, ref_attention
from archdsl.ops.registry import Attr, op, positive
from archdsl.ops.shapes import need_heads, need_spatial, numel, odd, spatial


class SharedDepthwise(nn.Module):
    """One k^d kernel and one bias applied to every channel alike (a depthwise conv with tied channels)."""

    def __init__(self, k, dims):
        super().__init__()
        self.weight = nn.Parameter(torch.randn((1, 1) + (k,) * dims) / k ** (dims / 2))
        self.bias = nn.Parameter(torch.zeros(1))
        self.k, self.dims = k, dims

    def forward(self, x):
        c = x.shape[1]
        w = self.weight.expand(c, *self.weight.shape[1:])
        conv = F.conv1d if self.dims == 1 else F.conv2d
        return conv(x, w, self.bias.expand(c), padding=self.k // 2, groups=c)


class ConvShareAttention(nn.Module):
    """softmax(q k^T / sqrt(d)) v per head over the positions; q, k, v, output: shared depthwise convs."""

    _emit_deps = (SharedDepthwise,)

    def __init__(self, channels, heads, k=3, dims=2):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.proj = (SharedDepthwise(k, dims) for _ in range(4))

    def forward(self, x):
        n, c = x.shape[:2]
        d = c // self.heads

        def tokens(t):  # (N, C, *pos) -> (N, heads, P, d)
            return t.reshape(n, self.heads, d, -1).transpose(2, 3).contiguous()  # strided: 6x slower SDPA

        # the fused kernel never materializes the P x P scores (same scale 1 / sqrt(d) as the paper's MHSA)
        out = F.scaled_dot_product_attention(tokens(self.q(x)), tokens(self.k(x)), tokens(self.v(x)))
        out = out.transpose(2, 3).reshape(x.shape)
        return self.proj(out)


def _ref_shared(m, x):
    """The shared kernel's taps summed over shifted, zero-padded copies of every channel."""
    dims, pad = x.dim() - 2, m.k // 2
    xp = F.pad(x, [pad] * (2 * dims))
    out = torch.zeros_like(x)
    for tap in kernel_offsets((m.k,) * dims):
        window = xp[(slice(None), slice(None), *(slice(t, t + s) for t, s in zip(tap, x.shape[2:])))]
        out = out + window * m.weight.double()[(0, 0, *tap)]
    return out + m.bias.double()[0]


def _reference(m, x):
    x = x.double()
    n, c = x.shape[:2]

    def seq(t):
        return t.reshape(n, c, -1).transpose(1, 2)  # (N, P, C)

    q, k, v = (seq(_ref_shared(p, x)) for p in (m.q, m.k, m.v))
    out = ref_attention(q, k, v, m.heads, 1.0 / math.sqrt(c // m.heads))
    return _ref_shared(m.proj, out.transpose(1, 2).reshape(x.shape))


def _shape(a, ins):
    need_spatial("convshare", ins[0], (1, 2))
    need_heads("convshare", ins[0][0], a.heads, ins[0])
    return tuple(ins[0])


# Counts: four projections, each one shared k^d kernel plus one bias; MACs: each projection k^d per channel and
# position (C * P * k^d), QK^T and AV (P^2 * C each), as the usual attention MACs with the linear layers swapped.
op("convshare", Attr("k", "int", 3, check=odd, doc="kernel size of the shared depthwise convs"),
   Attr("heads", "int", None, check=positive, doc="default: C / 32 when 32 divides C, else 1"),
   shape=_shape,
   params=lambda a, ins: 4 * (a.k ** (len(ins[0]) - 1) + 1),
   macs=lambda a, ins, out: (4 * ins[0][0] * numel(spatial(ins[0])) * a.k ** (len(ins[0]) - 1)
                             + 2 * numel(spatial(ins[0])) ** 2 * ins[0][0]),
   torch=lambda a, ins: (ConvShareAttention, dict(channels=ins[0][0], heads=need_heads("convshare", ins[0][0],
                                                                                       a.heads, ins[0]),
                                                  k=a.k, dims=len(ins[0]) - 1)),
   reference=_reference, spatial_dims=(1, 2), category="mixer",
   doc="ConvShareViT attention: MHSA whose q, k, v and output linears are depthwise convs with one kernel shared "
       "by all channels (4 (k^d + 1) parameters).",
   examples=(({}, [(6, 5, 7)]), ({"heads": 2, "k": 5}, [(4, 11)]), ({"heads": 3}, [(6, 3, 4)])))
