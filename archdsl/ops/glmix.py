"""GLMix's global-local mixer (Zhu et al. 2024, "Revisiting the Integration of Convolution and Attention for
Vision Backbone"; rayleizhu/GLMix models/glnet.py `GLMixBlock._forward_relation` and the layers it uses):

    logits = scale * l2norm(slots0) l2norm(x)^T          (S x P; scale learnable, init C^-1/2)
    slots  = softmax_P(logits) x                         (soft clustering of the P positions into S slots)
    slots  = MHA(slots)                                  (nn.MultiheadAttention: in-proj 3C, out-proj C, biases)
    y      = softmax_S(logits)^T slots + pw(dw_k(pw(x))) (dispatch back + the local conv branch)

slots0, the initial slots: an adaptive average pool of the input to S cells (init="pool", the official
'ada_avgpool'; S a square in 2-D) or S learnable vectors (init="param", std 0.02). The official block pools its
input before its norm; as a mixer this op pools what it is given (the normed input). The official block is
2-D; the 1-D form (S cells pooled along a sequence, a k-wide depthwise conv) is this op's. The norm, layer
scale and residual around it belong to the block. A registered op, not a library block: the language has no
L2 normalisation and no adaptive pooling to S cells.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.references import kernel_offsets, ref_linear, ref_softmax
from archdsl.ops.registry import Attr, op, positive
from archdsl.ops.shapes import need_heads, need_spatial, numel, odd, spatial


class SlotAttention(nn.Module):
    """Multi-head self-attention among the slots, with nn.MultiheadAttention's parameters (in_proj 3C, out_proj),
    written out so that FlopCounterMode sees its matmuls."""

    def __init__(self, channels, heads):
        super().__init__()
        self.in_proj, self.out_proj = nn.Linear(channels, 3 * channels), nn.Linear(channels, channels)
        self.heads = heads

    def forward(self, s):  # (N, S, C)
        n, m, c = s.shape
        q, k, v = (t.reshape(n, m, self.heads, -1).transpose(1, 2) for t in self.in_proj(s).chunk(3, -1))
        attn = (q @ k.transpose(-1, -2) * (c // self.heads) ** -0.5).softmax(-1)
        return self.out_proj((attn @ v).transpose(1, 2).reshape(n, m, c))


class GLMix(nn.Module):
    _emit_deps = (SlotAttention,)

    def __init__(self, channels, slots, heads, k=5, init="pool", dims=2):
        super().__init__()
        conv = (nn.Conv1d, nn.Conv2d)[dims - 1]
        self.scale = nn.Parameter(torch.tensor(channels ** -0.5))
        self.mha = SlotAttention(channels, heads)
        self.local = nn.Sequential(conv(channels, channels, 1),
                                   conv(channels, channels, k, padding=k // 2, groups=channels),
                                   conv(channels, channels, 1))
        if init == "param":
            self.slots = nn.Parameter(torch.randn(1, slots, channels) * 0.02)
        self.n_slots, self.init, self.dims = slots, init, dims

    def _initial_slots(self, x):
        if self.init == "param":
            return self.slots.expand(x.shape[0], -1, -1)
        if self.dims == 1:
            return F.adaptive_avg_pool1d(x, self.n_slots).transpose(1, 2)
        return F.adaptive_avg_pool2d(x, math.isqrt(self.n_slots)).flatten(2).transpose(1, 2)

    def forward(self, x):
        t = x.flatten(2).transpose(1, 2)  # (N, P, C)
        logits = F.normalize(self._initial_slots(x), dim=-1) @ (self.scale * F.normalize(t, dim=-1)).transpose(1, 2)
        slots = self.mha(logits.softmax(-1) @ t)
        out = logits.transpose(1, 2).softmax(-1) @ slots
        return out.transpose(1, 2).reshape(x.shape) + self.local(x)


def _ref_pool(x, s, dims):
    """Adaptive average pooling by its bin formula: cell i covers floor(i L / s) .. ceil((i + 1) L / s)."""
    side = s if dims == 1 else math.isqrt(s)
    cells = []
    for cell in kernel_offsets((side,) * dims):
        idx = tuple(slice(i * n // side, -(-(i + 1) * n // side)) for i, n in zip(cell, x.shape[2:]))
        cells.append(x[(slice(None), slice(None), *idx)].reshape(*x.shape[:2], -1).mean(-1))
    return torch.stack(cells, 1)  # (N, S, C)


def _ref_conv(conv, x):
    """A conv (pointwise or depthwise, same padding) as a sum over taps of shifted copies."""
    k, dims = conv.kernel_size[0], x.dim() - 2
    w, pad = conv.weight.double(), k // 2
    xp = F.pad(x, [pad] * (2 * dims))
    out = conv.bias.double().reshape(1, -1, *[1] * dims).expand(*x.shape[:1], w.shape[0], *x.shape[2:]).clone()
    for tap in kernel_offsets((k,) * dims):
        window = xp[(slice(None), slice(None), *(slice(t, t + s) for t, s in zip(tap, x.shape[2:])))]
        if conv.groups == 1:
            out = out + torch.einsum("oc,nc...->no...", w[(slice(None), slice(None), *tap)], window)
        else:
            out = out + window * w[(slice(None), 0, *tap)].reshape(1, -1, *[1] * dims)
    return out


def _unit(t):
    return t / t.pow(2).sum(-1, keepdim=True).sqrt()


def _reference(m, x):
    x = x.double()
    t = x.reshape(*x.shape[:2], -1).transpose(1, 2)
    s0 = m.slots.double().expand(x.shape[0], -1, -1) if m.init == "param" else _ref_pool(x, m.n_slots, m.dims)
    logits = m.scale.double() * _unit(s0) @ _unit(t).transpose(1, 2)
    s = ref_softmax(logits) @ t
    c, h = x.shape[1], m.mha.heads
    q, k, v = ref_linear(s, m.mha.in_proj).split(c, -1)
    d = c // h
    mixed = torch.cat([ref_softmax(q[..., i * d:(i + 1) * d] @ k[..., i * d:(i + 1) * d].transpose(1, 2) / d ** 0.5)
                       @ v[..., i * d:(i + 1) * d] for i in range(h)], -1)
    s = ref_linear(mixed, m.mha.out_proj)
    out = ref_softmax(logits.transpose(1, 2)) @ s
    local = x
    for conv in m.local:
        local = _ref_conv(conv, local)
    return out.transpose(1, 2).reshape(x.shape) + local


def _shape(a, ins):
    need_spatial("glmix", ins[0], (1, 2))
    need_heads("glmix", ins[0][0], a.heads, ins[0])
    if a.init == "pool" and len(ins[0]) == 3 and math.isqrt(a.slots) ** 2 != a.slots:
        raise ArchError(f"glmix(): slots={a.slots} pooled from a 2-D input (shape {list(ins[0])}) must be a square",
                        hint="choose slots = 4, 9, 16, 64 ... or init = \"param\"")
    return tuple(ins[0])


# Counted from GLMixBlock's spatial-mixing layers: slot_scale (1), relation_mha (nn.MultiheadAttention: 3C^2 + 3C
# in, C^2 + C out), feature_conv (1x1, depthwise k^d, 1x1, all with bias), init_slots (S C) when learnable. MACs:
# logits and clustering S P C each, the MHA 4 S C^2 + 2 S^2 C, dispatch P S C, the local branch P (2 C^2 + C k^d).
def _params(a, ins):
    c, kd = ins[0][0], a.k ** (len(ins[0]) - 1)
    return 1 + 4 * c * c + 4 * c + 2 * (c * c + c) + c * kd + c + (a.slots * c if a.init == "param" else 0)


def _macs(a, ins, out):
    c, p, s, kd = ins[0][0], numel(spatial(ins[0])), a.slots, a.k ** (len(ins[0]) - 1)
    return 3 * s * p * c + 4 * s * c * c + 2 * s * s * c + p * (2 * c * c + c * kd)


op("glmix", Attr("slots", "int", 64, check=positive, doc="number of semantic slots S (64 in the paper)"),
   Attr("heads", "int", None, check=positive, doc="heads of the slot attention (default: C / 32, else 1)"),
   Attr("k", "int", 5, check=odd, doc="depthwise kernel of the local branch (5 in the paper)"),
   Attr("init", "str", "pool", choices=("pool", "param"), doc="initial slots: pooled input or learnable"),
   shape=_shape, params=_params, macs=_macs,
   torch=lambda a, ins: (GLMix, dict(channels=ins[0][0], slots=a.slots, k=a.k, init=a.init, dims=len(ins[0]) - 1,
                                     heads=need_heads("glmix", ins[0][0], a.heads, ins[0]))),
   reference=_reference, spatial_dims=(1, 2), category="mixer",
   doc="GLMix: soft clustering of the positions into S slots (cosine logits), MHA among the slots, dispatch back, "
       "plus a local pw -> dw k -> pw branch; no residual.",
   examples=(({"slots": 4}, [(4, 5, 6)]), ({"slots": 3, "heads": 2, "k": 3}, [(6, 9)]),
             ({"slots": 5, "init": "param"}, [(4, 3, 4)]), ({"slots": 9}, [(2, 2, 2)])))
