"""MetaFormer token mixers: poolmix (PoolFormer), randmix (RandFormer), sepconv (ConvFormer).

Each follows its official code (named per op below) for structure, defaults and init. Tokens are the spatial
positions of a (C, L) / (C, H, W) input, features its C channels. MACs count conv / linear MACs only (the
papers' convention); pooling, BatchNorm and activations are elementwise and not counted. The references are
written independently of the modules: explicit loops over kernel offsets, activations written out, in float64.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.activations import StarReLU
from archdsl.ops.conv import conv_reference
from archdsl.ops.references import kernel_offsets, ref_act
from archdsl.ops.registry import Attr, op, positive
from archdsl.ops.shapes import need_spatial, numel, odd, same_shape

# ---------------------------------------------------------------------------------------------- poolmix
# PoolFormer (Yu et al., "MetaFormer is Actually What You Need for Vision"); timm metaformer.py `Pooling`:
# AvgPool(pool_size=3, stride=1, padding=pool_size//2, count_include_pad=False)(x) - x.


class PoolMix(nn.Module):
    """pool(x) - x with a stride-1 average pool that averages only the in-bounds positions."""

    def __init__(self, ndim, pool_size=3):
        super().__init__()
        pool = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)[ndim - 1]
        self.pool = pool(pool_size, stride=1, padding=pool_size // 2, count_include_pad=False)

    def forward(self, x):
        return self.pool(x) - x


def _poolmix_reference(m, x):
    """Sum and count the in-bounds neighbours by an explicit loop over window offsets."""
    x = x.double()
    k = m.pool.kernel_size
    nd = x.dim() - 2
    k = tuple(k) if isinstance(k, (tuple, list)) else (k,) * nd
    total, count = torch.zeros_like(x), torch.zeros_like(x)
    ones = torch.ones_like(x)
    pads = [p for kk in reversed(k) for p in (kk // 2, kk // 2)]
    xp, op_ = F.pad(x, pads), F.pad(ones, pads)
    for offset in kernel_offsets(k):
        sl = (slice(None), slice(None)) + tuple(slice(o, o + s) for o, s in zip(offset, x.shape[2:]))
        total += xp[sl]
        count += op_[sl]
    return total / count - x


op("poolmix", Attr("k", "int", 3, check=odd, doc="pool size (odd)"),
   shape=same_shape("poolmix"),
   torch=lambda a, ins: (PoolMix, dict(ndim=len(ins[0]) - 1, pool_size=a.k)),
   reference=_poolmix_reference, spatial_dims=(1, 2, 3), category="mixer",
   half_spatial_dims=(1, 2),  # no bf16/fp16 avg_pool3d on CPU
   doc="PoolFormer token mixer: avgpool(k, stride 1, count_include_pad=False)(x) - x; 0 params, 0 MACs.",
   examples=(({}, [(3, 7, 5)]), ({"k": 5}, [(4, 9)]), ({"k": 3}, [(2, 1, 6)]), ({}, [(2, 3, 4, 5)])))


# ---------------------------------------------------------------------------------------------- randmix
# RandFormer (Yu et al., "MetaFormer Baselines for Vision"); sail-sg/metaformer `RandomMixing`:
# a frozen softmax(rand(N, N), dim=-1) token-mixing matrix (there a requires_grad=False Parameter; here a
# buffer, so it is saved with the model but never counted or trained).


class RandMix(nn.Module):
    """y[:, :, m] = sum_n R[m, n] x[:, :, n] over the flattened positions, R = softmax(rand(N, N)) frozen."""

    def __init__(self, num_tokens, seed=None):
        super().__init__()
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        self.register_buffer("random_matrix", torch.softmax(torch.rand(num_tokens, num_tokens, generator=g), -1))

    def forward(self, x):
        n, c = x.shape[:2]
        return (x.reshape(n, c, -1) @ self.random_matrix.T).reshape(x.shape)


def _randmix_reference(m, x):
    x = x.double()
    n, c = x.shape[:2]
    t = x.reshape(n, c, -1)
    r = m.random_matrix.double()
    y = torch.zeros_like(t)
    for j in range(t.shape[-1]):
        y += r[:, j] * t[..., j:j + 1]  # token j's contribution to every output token
    return y.reshape(x.shape)


op("randmix", Attr("seed", "int", None, doc="seed of the random matrix (default: the global torch RNG)"),
   shape=same_shape("randmix"),
   macs=lambda a, ins, out: numel(ins[0][1:]) ** 2 * ins[0][0],  # an (N x N) by (N x C) matmul
   torch=lambda a, ins: (RandMix, dict(num_tokens=numel(ins[0][1:]), seed=a.seed)),
   reference=_randmix_reference, spatial_dims=(1, 2, 3), category="mixer",
   doc="RandFormer token mixer: a frozen random row-stochastic N x N matrix over the N positions "
       "(a buffer: 0 params); N*N*C MACs.",
   examples=(({}, [(3, 5, 7)]), ({"seed": 3}, [(4, 11)]), ({}, [(2, 3, 2, 3)])))


# ---------------------------------------------------------------------------------------------- sepconv
# ConvFormer (Yu et al., "MetaFormer Baselines for Vision"); timm metaformer.py `SepConv`: pwconv1 C -> 2C,
# StarReLU (scale 1, bias 0, learnable), depthwise k=7 (padding 3), pwconv2 2C -> C, no biases.


class SepConv(nn.Module):
    """Inverted separable conv: 1x1 expand, StarReLU, depthwise k, 1x1 project (timm names)."""

    _emit_deps = (StarReLU,)

    def __init__(self, ndim, dim, expansion_ratio=2.0, kernel_size=(7, 7)):
        super().__init__()
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[ndim - 1]
        mid = int(expansion_ratio * dim)
        self.pwconv1 = conv(dim, mid, 1, bias=False)
        self.act1 = StarReLU()
        self.dwconv = conv(mid, mid, tuple(kernel_size), padding=tuple(k // 2 for k in kernel_size),
                           groups=mid, bias=False)
        self.pwconv2 = conv(mid, dim, 1, bias=False)

    def forward(self, x):
        return self.pwconv2(self.dwconv(self.act1(self.pwconv1(x))))


def _sepconv_mid(a, ins):
    return int(a.expansion * ins[0][0])


def _sepconv_shape(a, ins):
    need_spatial("sepconv", ins[0])
    if _sepconv_mid(a, ins) < 1:
        raise ArchError(f"sepconv(): expansion={a.expansion} leaves no hidden channels (input shape {list(ins[0])})",
                        hint="use an expansion with expansion * C >= 1")
    return tuple(ins[0])


def _sepconv_reference(m, x):
    x = x.double()
    y = conv_reference(m.pwconv1, x)
    y = m.act1.scale.double() * ref_act("relu", y) ** 2 + m.act1.bias.double()
    return conv_reference(m.pwconv2, conv_reference(m.dwconv, y))


op("sepconv", Attr("k", "ints", 7, check=odd, doc="depthwise kernel size"),
   Attr("expansion", "float", 2.0, check=positive, doc="hidden channels = int(expansion * C)"),
   shape=_sepconv_shape,
   # 2 pointwise convs C*mid each, a depthwise conv mid*prod(k), and StarReLU's scale and bias
   params=lambda a, ins: 2 * ins[0][0] * _sepconv_mid(a, ins) + _sepconv_mid(a, ins) * math.prod(a.k) + 2,
   macs=lambda a, ins, out: numel(ins[0][1:]) * _sepconv_mid(a, ins) * (2 * ins[0][0] + math.prod(a.k)),
   torch=lambda a, ins: (SepConv, dict(ndim=len(ins[0]) - 1, dim=ins[0][0], expansion_ratio=a.expansion,
                                       kernel_size=a.k)),
   reference=_sepconv_reference, spatial_dims=(1, 2, 3), category="mixer",
   doc="ConvFormer token mixer: pwconv C->2C, StarReLU, dwconv k=7, pwconv 2C->C (no biases).",
   examples=(({}, [(3, 9, 8)]), ({"k": 5, "expansion": 1.5}, [(4, 13)]), ({"k": [3, 5]}, [(2, 5, 7)]),
             ({"k": 3}, [(2, 3, 4, 5)])))


