"""MetaFormer token mixers and attention variants: poolmix, randmix, sepconv, relattn, winattn, cvtattn.

Each follows its official code (named per op below) for structure, defaults and init. Tokens are the spatial
positions of a (C, L) / (C, H, W) input, features its C channels. MACs count conv / linear / matmul MACs only
(the papers' convention): attention over N tokens with C channels costs 3NC^2 (qkv) + N^2C (QK^T) + N^2C (AV)
+ NC^2 (output projection); softmax, pooling, BatchNorm and activations are elementwise and not counted.
The references below are written independently of the modules: explicit loops over kernel offsets, windows
and token pairs, explicit softmax, BatchNorm written out, all in float64.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.activations import StarReLU
from archdsl.ops.conv import _product, conv_reference
from archdsl.ops.registry import Attr, op, positive
from archdsl.ops.shapes import conv_out, need_spatial, numel

# ------------------------------------------------------------------------------------------- helpers


def odd(v):
    vals = v if isinstance(v, tuple) else (v,)
    return None if all(x > 0 and x % 2 for x in vals) else "must be positive and odd (so the size is kept)"


def need_heads(name, c, heads, in_shape):
    """The head count: given, or C/32 (head size 32, as Swin / MetaFormer / MOAT) when 32 divides C, else 1."""
    if heads is None:
        return c // 32 if c % 32 == 0 else 1
    if c % heads:
        raise ArchError(f"{name}(): heads={heads} does not divide the {c} channels (input shape {list(in_shape)})",
                        hint=f"choose a head count that divides {c}")
    return heads


def same_shape(name, dims=(1, 2, 3)):
    """Shape rule of a mixer that keeps its input shape, for inputs with `dims` spatial dims."""

    def rule(a, ins):
        need_spatial(name, ins[0], dims)
        return tuple(ins[0])

    return rule


def attention_macs(n_q, n_kv, c):
    """q projection on n_q tokens, k/v projections on n_kv tokens, QK^T and AV, output projection."""
    return n_q * c * c + 2 * n_kv * c * c + 2 * n_q * n_kv * c + n_q * c * c


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


# ---------------------------------------------------------------------------------- reference helpers


def ref_softmax(t):
    e = torch.exp(t - t.amax(-1, keepdim=True))
    return e / e.sum(-1, keepdim=True)


def ref_linear(t, layer):
    y = t @ layer.weight.double().T
    return y + layer.bias.double() if layer.bias is not None else y


def ref_bn(bn, y):
    """BatchNorm written out (float64): shared with the conv mixers' references."""
    from archdsl.ops.mixers_conv import bn_reference

    return bn_reference(bn, y)


def ref_act(name, x):
    if name == "relu":
        return x * (x > 0)
    if name == "silu":
        return x / (1.0 + torch.exp(-x))
    if name == "gelu":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    raise ValueError(name)


def ref_rel_bias(table, size):
    """(heads, N, N) bias by an explicit loop over (query, key) position pairs."""
    table = table.double()
    positions = list(_product(tuple(size)))
    bias = torch.empty(table.shape[1], len(positions), len(positions), dtype=torch.float64)
    for i, pi in enumerate(positions):
        for j, pj in enumerate(positions):
            row = 0
            for d, s in enumerate(size):
                row = row * (2 * s - 1) + (pi[d] - pj[d] + s - 1)
            bias[:, i, j] = table[row]
    return bias


def ref_attention(q, k, v, heads, scale, bias=None):
    """softmax(Q K^T * scale + bias) V per head; q (B, Nq, C), k/v (B, Nk, C) float64."""
    d = q.shape[-1] // heads
    out = torch.empty_like(q)
    for h in range(heads):
        cols = slice(h * d, (h + 1) * d)
        scores = q[..., cols] @ k[..., cols].transpose(1, 2) * scale
        if bias is not None:
            scores = scores + bias[h]
        out[..., cols] = ref_softmax(scores) @ v[..., cols]
    return out


def ref_relattn_tokens(m, t):
    """A RelAttn module applied to float64 tokens (B, N, C)."""
    c = t.shape[-1]
    q, k, v = ref_linear(t, m.qkv).split(c, dim=-1)
    bias = ref_rel_bias(m.rel_table, m.size) if m.rel_table is not None else None
    return ref_linear(ref_attention(q, k, v, m.heads, (c // m.heads) ** -0.5, bias), m.proj)


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
    for offset in _product(k):
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

    def attend(self, t):
        """Attention among tokens t (B, N, C), N = prod(size)."""
        b, n, c = t.shape
        q, k, v = self.qkv(t).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q * self.scale) @ k.transpose(-2, -1)  # (B, heads, N, N)
        if self.rel_table is not None:
            scores = scores + self.rel_table[self.rel_index].permute(2, 0, 1)
        out = scores.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))

    def forward(self, x):
        n, c = x.shape[:2]
        return self.attend(x.reshape(n, c, -1).transpose(1, 2)).transpose(1, 2).reshape(x.shape)


def _relattn_shape(a, ins):
    need_spatial("relattn", ins[0], (1, 2))
    need_heads("relattn", ins[0][0], a.heads, ins[0])
    return tuple(ins[0])


def _attn_params(c, heads, size, a):
    return 4 * c * c + (3 * c if a.qkv_bias else 0) + c + (rel_table_size(size) * heads if a.rel_pos else 0)


def _relattn_reference(m, x):
    x = x.double()
    n, c = x.shape[:2]
    t = x.reshape(n, c, -1).transpose(1, 2)
    return ref_relattn_tokens(m, t).transpose(1, 2).reshape(x.shape)


def _attn_attrs():
    return (Attr("heads", "int", None, check=positive, doc="default: C/32 when 32 divides C, else 1"),
            Attr("qkv_bias", "bool", True), Attr("rel_pos", "bool", True, doc="learnable relative position bias"))


op("relattn", *_attn_attrs(),
   shape=_relattn_shape,
   params=lambda a, ins: _attn_params(ins[0][0], need_heads("relattn", ins[0][0], a.heads, ins[0]), ins[0][1:], a),
   macs=lambda a, ins, out: attention_macs(numel(ins[0][1:]), numel(ins[0][1:]), ins[0][0]),
   torch=lambda a, ins: (RelAttn, dict(dim=ins[0][0], heads=need_heads("relattn", ins[0][0], a.heads, ins[0]),
                                       size=tuple(ins[0][1:]), qkv_bias=a.qkv_bias, rel_pos=a.rel_pos)),
   reference=_relattn_reference, spatial_dims=(1, 2), category="mixer",
   doc="Global MHSA over all positions with a learnable relative position bias table per head "
       "((2H-1)(2W-1) x heads; (2L-1) x heads in 1-D).",
   examples=(({"heads": 2}, [(6, 3, 5)]), ({"heads": 3, "qkv_bias": False}, [(6, 7)]),
             ({"rel_pos": False, "heads": 1}, [(4, 2, 3)]), ({}, [(8, 4, 3)])))


# ---------------------------------------------------------------------------------------------- winattn
# Swin window attention (Liu et al. 2021; timm swin_transformer.py `WindowAttention` / `SwinTransformerBlock`):
# zero-pad H, W up to multiples of the window at the bottom / right (as Swin does after norm1), attend within
# each non-overlapping window with a shared per-head relative bias table ((2wh-1)(2ww-1), heads), crop back.
# Swin's padded tokens are not masked in unshifted windows; neither are they here.


def window_partition(x, window):
    """(n, c, *sizes) with sizes divisible by window -> (n * windows, prod(window), c) tokens."""
    n, c, sizes = x.shape[0], x.shape[1], x.shape[2:]
    nd = len(window)
    split = [n, c]
    for s, w in zip(sizes, window):
        split += [s // w, w]
    perm = [0] + [2 + 2 * i for i in range(nd)] + [3 + 2 * i for i in range(nd)] + [1]
    return x.reshape(split).permute(perm).reshape(-1, math.prod(window), c)


def window_reverse(t, window, sizes):
    """Inverse of window_partition: (n * windows, prod(window), c) -> (n, c, *sizes)."""
    nd = len(window)
    grid = [s // w for s, w in zip(sizes, window)]
    c = t.shape[-1]
    x = t.reshape(-1, *grid, *window, c)
    perm = [0, 2 * nd + 1]
    for i in range(nd):
        perm += [1 + i, 1 + nd + i]
    return x.permute(perm).reshape(-1, c, *sizes)


class WinAttn(nn.Module):
    """Window attention: pad, partition into windows, RelAttn within each window, merge, crop."""

    _emit_deps = (RelAttn, rel_index, window_partition, window_reverse)

    def __init__(self, dim, heads, window, qkv_bias=True, rel_pos=True):
        super().__init__()
        self.window = tuple(window)
        self.attn = RelAttn(dim, heads, self.window, qkv_bias=qkv_bias, rel_pos=rel_pos)

    def forward(self, x):
        sizes = x.shape[2:]
        padded = [-(-s // w) * w for s, w in zip(sizes, self.window)]
        pads = [p for s, ps in zip(reversed(sizes), reversed(padded)) for p in (0, ps - s)]
        xp = F.pad(x, pads) if any(pads) else x
        y = window_reverse(self.attn.attend(window_partition(xp, self.window)), self.window, padded)
        return y[(slice(None), slice(None)) + tuple(slice(0, s) for s in sizes)]


def _padded(size, window):
    return tuple(-(-s // w) * w for s, w in zip(size, window))


def _winattn_shape(a, ins):
    need_spatial("winattn", ins[0], (1, 2))
    size = tuple(ins[0][1:])
    if any(w > s for w, s in zip(a.window, size)):
        raise ArchError(f"winattn(): window {list(a.window)} is larger than the input {list(size)} "
                        f"(input shape {list(ins[0])})",
                        hint="use a window no larger than the feature map (Swin clamps it to the map size), "
                             "or relattn for global attention")
    need_heads("winattn", ins[0][0], a.heads, ins[0])
    return tuple(ins[0])


def _winattn_macs(a, ins, out):
    # every padded position goes through qkv and proj; QK^T and AV are within windows of M = prod(window)
    c, m = ins[0][0], math.prod(a.window)
    n = numel(_padded(ins[0][1:], a.window))
    return 4 * n * c * c + 2 * n * m * c


def _winattn_reference(m, x):
    """Gather each window's tokens by explicit index loops from the zero-padded input; scatter them back."""
    x = x.double()
    n, c = x.shape[:2]
    window = m.window
    sizes = x.shape[2:]
    padded = _padded(sizes, window)
    xp = torch.zeros(n, c, *padded, dtype=torch.float64)
    xp[(slice(None), slice(None)) + tuple(slice(0, s) for s in sizes)] = x
    y = torch.zeros_like(xp)
    grid = [p // w for p, w in zip(padded, window)]
    for origin in _product(tuple(grid)):
        cells = [tuple(o * w + i for o, w, i in zip(origin, window, inner)) for inner in _product(window)]
        t = torch.stack([xp[(slice(None), slice(None)) + cell] for cell in cells], dim=1)  # (n, M, c)
        out = ref_relattn_tokens(m.attn, t)
        for j, cell in enumerate(cells):
            y[(slice(None), slice(None)) + cell] = out[:, j]
    return y[(slice(None), slice(None)) + tuple(slice(0, s) for s in sizes)]


op("winattn", Attr("window", "ints", 7, check=positive, doc="window size per spatial dim"), *_attn_attrs(),
   shape=_winattn_shape,
   params=lambda a, ins: _attn_params(ins[0][0], need_heads("winattn", ins[0][0], a.heads, ins[0]), a.window, a),
   macs=_winattn_macs,
   torch=lambda a, ins: (WinAttn, dict(dim=ins[0][0], heads=need_heads("winattn", ins[0][0], a.heads, ins[0]),
                                       window=a.window, qkv_bias=a.qkv_bias, rel_pos=a.rel_pos)),
   reference=_winattn_reference, spatial_dims=(1, 2), category="mixer",
   doc="Swin window attention: MHSA within non-overlapping windows (zero-padded to multiples of the window) "
       "with a per-head relative position bias table ((2wh-1)(2ww-1) x heads).",
   examples=(({"window": 3, "heads": 2}, [(4, 6, 7)]), ({"window": [2, 3], "heads": 1}, [(3, 5, 6)]),
             ({"window": 4, "heads": 2, "qkv_bias": False}, [(6, 10)]), ({"window": 5, "rel_pos": False}, [(2, 5)])))


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
