"""Convolutional blocks of mobile networks: se (squeeze-excitation), mbconv (MobileNetV2 / EfficientNet),
moat (MBConv + attention), lsconv (LSNet large-small conv). FFT mixers: mixers_freq.py.

Each follows its official code (named per op below) for structure, defaults and init. MACs count conv /
linear / matmul MACs only (the papers' convention); norms, activations, gates and pooling are elementwise.
References are written independently of the modules, in float64: loops over kernel offsets and windows,
norms and activations written out.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.activations import BLOCK_ACTS, act_name
from archdsl.ops.attention import RelAttn, ref_relattn_tokens, rel_index, rel_table_size
from archdsl.ops.conv import conv_reference
from archdsl.ops.references import kernel_offsets, ref_act, ref_bn, ref_linear, ref_sigmoid
from archdsl.ops.registry import Attr, non_negative, op, positive
from archdsl.ops.shapes import attention_macs, conv_out, need_heads, need_spatial, numel, odd, same_shape


def _nd(ins):
    return len(ins[0]) - 1


# --------------------------------------------------------------------------------------------------- se
# Squeeze-and-Excitation (Hu et al. 2018; timm layers/squeeze_excite.py SEModule): global average pool,
# FC C -> rd (bias), activation, FC rd -> C (bias), sigmoid gate; rd = max(1, int(C * rd_ratio)).


class SqueezeExcite(nn.Module):
    """x * sigmoid(fc2(act(fc1(mean over positions of x))))."""

    def __init__(self, channels, rd_channels, act="relu"):
        super().__init__()
        self.fc1 = nn.Linear(channels, rd_channels)
        self.act = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}[act]()
        self.fc2 = nn.Linear(rd_channels, channels)

    def forward(self, x):
        gate = torch.sigmoid(self.fc2(self.act(self.fc1(x.flatten(2).mean(-1)))))
        return x * gate.reshape(*gate.shape, *([1] * (x.dim() - 2)))


def _se_rd(a, ins):
    return a.rd if a.rd is not None else max(1, int(ins[0][0] * a.rd_ratio))


def ref_se(m, x, act):
    """SE written out: the mean as an explicit sum over positions."""
    t = x.reshape(*x.shape[:2], -1)
    s = sum(t[..., i] for i in range(t.shape[-1])) / t.shape[-1]
    gate = ref_sigmoid(ref_linear(ref_act(act, ref_linear(s, m.fc1)), m.fc2))
    return x * gate.reshape(*gate.shape, *([1] * (x.dim() - 2)))


op("se", Attr("rd_ratio", "float", 0.25, check=positive, doc="reduced channels = max(1, int(C * rd_ratio))"),
   Attr("rd", "int", None, check=positive, doc="reduced channels (overrides rd_ratio)"),
   Attr("act", "str", "relu", choices=tuple(BLOCK_ACTS)),
   shape=same_shape("se"),
   params=lambda a, ins: 2 * ins[0][0] * _se_rd(a, ins) + _se_rd(a, ins) + ins[0][0],
   macs=lambda a, ins, out: 2 * ins[0][0] * _se_rd(a, ins),  # two FCs on the pooled vector
   torch=lambda a, ins: (SqueezeExcite, dict(channels=ins[0][0], rd_channels=_se_rd(a, ins), act=a.act)),
   reference=lambda m, x: ref_se(m, x.double(), act_name(m.act)), spatial_dims=(1, 2, 3), category="block",
   doc="Squeeze-and-excitation channel gate: pool, FC C->rd (rd given, else max(1, int(C * rd_ratio))), act, "
       "FC rd->C, sigmoid, x * gate; no residual.",
   examples=(({}, [(8, 5, 7)]), ({"rd": 3, "act": "silu"}, [(6, 11)]), ({"rd_ratio": 0.5}, [(3, 2, 3)]),
             ({"rd": 2, "act": "gelu"}, [(4, 2, 3, 2)])))


# ----------------------------------------------------------------------------------------------- mbconv
# MobileNetV2 inverted residual with EfficientNet's SE (Sandler et al. 2018, Tan & Le 2019; timm
# _efficientnet_blocks.py InvertedResidual): 1x1 expand (no bias) + BN + act (skipped when expand == 1),
# depthwise k (stride, no bias) + BN + act, SE with rd = max(1, int(in_channels * se_ratio)) and the block's
# activation (EfficientNet), 1x1 project (no bias) + BN, residual when stride 1 and in == out.


class MBConv(nn.Module):
    """Inverted residual block (timm names: conv_pw, bn1, conv_dw, bn2, se, conv_pwl, bn3)."""

    _emit_deps = (SqueezeExcite,)

    def __init__(self, ndim, in_channels, out_channels, expand=4, kernel_size=3, stride=1, se_ratio=0.25,
                 act="silu"):
        super().__init__()
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[ndim - 1]
        bn = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[ndim - 1]
        act_cls = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}[act]
        mid = in_channels * expand
        self.conv_pw = conv(in_channels, mid, 1, bias=False) if expand != 1 else None
        self.bn1 = bn(mid) if expand != 1 else None
        self.conv_dw = conv(mid, mid, kernel_size, stride=stride, padding=kernel_size // 2, groups=mid, bias=False)
        self.bn2 = bn(mid)
        self.act = act_cls()
        self.se = SqueezeExcite(mid, max(1, int(in_channels * se_ratio)), act) if se_ratio > 0 else None
        self.conv_pwl = conv(mid, out_channels, 1, bias=False)
        self.bn3 = bn(out_channels)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, x):
        y = self.act(self.bn1(self.conv_pw(x))) if self.conv_pw is not None else x
        y = self.act(self.bn2(self.conv_dw(y)))
        if self.se is not None:
            y = self.se(y)
        y = self.bn3(self.conv_pwl(y))
        return y + x if self.has_skip else y


def _stride_12(v):
    return None if v in (1, 2) else "must be 1 or 2"


def _strided(ins, k, stride):
    return tuple(conv_out(s, k, stride, k // 2, k // 2, 1) for s in ins[0][1:])


def _mbconv_shape(a, ins):
    need_spatial("mbconv", ins[0])
    return (a.out or ins[0][0], *_strided(ins, a.k, a.stride))


def _mbconv_parts(a, ins):
    cin, cout = ins[0][0], a.out or ins[0][0]
    mid = cin * a.expand
    rd = max(1, int(cin * a.se)) if a.se > 0 else 0
    return cin, cout, mid, rd, a.k ** _nd(ins)


def _mbconv_params(a, ins):
    cin, cout, mid, rd, kv = _mbconv_parts(a, ins)
    expand = cin * mid + 2 * mid if a.expand != 1 else 0
    se = 2 * mid * rd + rd + mid if rd else 0
    return expand + mid * kv + 2 * mid + se + mid * cout + 2 * cout


def _mbconv_macs(a, ins, out):
    cin, cout, mid, rd, kv = _mbconv_parts(a, ins)
    s_in, s_out = numel(ins[0][1:]), numel(out[1:])
    expand = s_in * cin * mid if a.expand != 1 else 0
    return expand + s_out * mid * kv + 2 * mid * rd + s_out * mid * cout


def _mbconv_reference(m, x):
    x = x.double()
    act = act_name(m.act)
    y = ref_act(act, ref_bn(m.bn1, conv_reference(m.conv_pw, x))) if m.conv_pw is not None else x
    y = ref_act(act, ref_bn(m.bn2, conv_reference(m.conv_dw, y)))
    if m.se is not None:
        y = ref_se(m.se, y, act)
    y = ref_bn(m.bn3, conv_reference(m.conv_pwl, y))
    same = y.shape == x.shape and m.conv_dw.stride[0] == 1
    return y + x if same else y


op("mbconv", Attr("out", "int", None, check=positive, doc="output channels (default: input channels)"),
   Attr("stride", "int", 1, check=_stride_12),
   Attr("expand", "int", 4, check=positive, doc="hidden width = expand * input channels (1: no expansion conv)"),
   Attr("k", "int", 3, check=odd, doc="depthwise kernel size"),
   Attr("se", "float", 0.25, check=non_negative, doc="SE width = max(1, int(input channels * se)); 0: no SE"),
   Attr("act", "str", "silu", choices=tuple(BLOCK_ACTS)),
   shape=_mbconv_shape, params=_mbconv_params, macs=_mbconv_macs,
   torch=lambda a, ins: (MBConv, dict(ndim=_nd(ins), in_channels=ins[0][0], out_channels=a.out or ins[0][0],
                                      expand=a.expand, kernel_size=a.k, stride=a.stride, se_ratio=a.se,
                                      act=a.act)),
   reference=_mbconv_reference, spatial_dims=(1, 2, 3), category="block",
   doc="MobileNetV2 / EfficientNet inverted residual: 1x1 expand to expand * in, BN, act, dw k (stride), BN, "
       "act, SE of max(1, int(in * se)), 1x1 project, BN; contains its residual (+ x) only when stride 1 and "
       "in == out.",
   examples=(({}, [(4, 7, 6)]), ({"out": 6, "stride": 2, "act": "gelu"}, [(4, 9, 7)]),
             ({"expand": 1, "se": 0.0, "k": 5}, [(3, 11)]), ({"stride": 2, "out": 5}, [(3, 10)]),
             ({"stride": 2, "se": 0.5}, [(2, 3, 4, 5)])))


# ------------------------------------------------------------------------------------------------- moat
# MOAT block (Yang et al. 2022; google-research/deeplab2 model/layers/moat_blocks.py MOATBlock and
# moat_attention.py): shortcut = avgpool(2, stride, 'same') when strided, then 1x1 conv (bias) when the width
# changes; MBConv without SE: BN pre-norm, 1x1 expand to 4 * out (no bias), BN, GELU, depthwise 3 (stride,
# no bias), BN, GELU, 1x1 shrink (bias), + shortcut; then LayerNorm (eps 1e-5) and MHSA (q, k, v, o with
# bias, head size 32, per-head relative position bias '2d_multi_head') + residual. No MLP. The relative bias
# here uses Swin's (query - key) table indexing; deeplab2 indexes key - query, a relabeling of the same table.


class MOAT(nn.Module):
    """MBConv (official MOATBlock names) followed by pre-LN relative-position MHSA, both residual."""

    _emit_deps = (RelAttn, rel_index)

    def __init__(self, ndim, in_channels, out_channels, heads, size, stride=1, expand=4, kernel_size=3,
                 rel_pos=True, bn_eps=1e-3):
        super().__init__()
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[ndim - 1]
        bn = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[ndim - 1]
        pool = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)[ndim - 1]
        mid = out_channels * expand
        # TF 'same' average pooling pads only at the end and averages the valid inputs: ceil_mode here
        self.shortcut_pool = pool(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else None
        self.shortcut_conv = conv(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.pre_norm = bn(in_channels, eps=bn_eps)
        self.expand_conv = conv(in_channels, mid, 1, bias=False)
        self.expand_norm = bn(mid, eps=bn_eps)
        self.depthwise_conv = conv(mid, mid, kernel_size, stride=stride, padding=kernel_size // 2, groups=mid,
                                   bias=False)
        self.depthwise_norm = bn(mid, eps=bn_eps)
        self.shrink_conv = conv(mid, out_channels, 1)
        self.act = nn.GELU()
        self.attention_norm = nn.LayerNorm(out_channels, eps=1e-5)
        self.attention = RelAttn(out_channels, heads, size, qkv_bias=True, rel_pos=rel_pos)

    def forward(self, x):
        shortcut = self.shortcut_pool(x) if self.shortcut_pool is not None else x
        if self.shortcut_conv is not None:
            shortcut = self.shortcut_conv(shortcut)
        y = self.act(self.expand_norm(self.expand_conv(self.pre_norm(x))))
        y = self.act(self.depthwise_norm(self.depthwise_conv(y)))
        y = self.shrink_conv(y) + shortcut
        t = y.flatten(2).transpose(1, 2)
        t = t + self.attention.attend(self.attention_norm(t))
        return t.transpose(1, 2).reshape(y.shape)


def _moat_heads(a, ins):
    return need_heads("moat", a.out or ins[0][0], a.heads, ins[0])


def _moat_shape(a, ins):
    need_spatial("moat", ins[0], (1, 2))
    if a.stride > 1 and min(ins[0][1:]) < 2:
        raise ArchError(f"moat(): stride {a.stride} needs every spatial size >= 2 (input shape {list(ins[0])})",
                        hint="use stride 1 on feature maps this small")
    _moat_heads(a, ins)
    return (a.out or ins[0][0], *_strided(ins, 3, a.stride))


def _moat_params(a, ins):
    cin, cout = ins[0][0], a.out or ins[0][0]
    mid, kv = cout * a.expand, 3 ** _nd(ins)
    shortcut = cin * cout + cout if cin != cout else 0
    mbconv = 2 * cin + cin * mid + 2 * mid + mid * kv + 2 * mid + mid * cout + cout
    table = rel_table_size(_strided(ins, 3, a.stride)) * _moat_heads(a, ins) if a.rel_pos else 0
    return shortcut + mbconv + 2 * cout + 4 * cout * cout + 4 * cout + table


def _moat_macs(a, ins, out):
    cin, cout = ins[0][0], a.out or ins[0][0]
    mid, kv = cout * a.expand, 3 ** _nd(ins)
    s_in, s_out = numel(ins[0][1:]), numel(out[1:])
    shortcut = s_out * cin * cout if cin != cout else 0
    return (shortcut + s_in * cin * mid + s_out * mid * kv + s_out * mid * cout
            + attention_macs(s_out, s_out, cout))


def _ref_avgpool2_ceil(x, stride):
    """Average of the in-bounds inputs of each length-2, stride-`stride` window (windows clipped at the end)."""
    for d in range(2, x.dim()):
        size = x.shape[d]
        outs = []
        for o in range(-(-(size - 2) // stride) + 1):
            lo, hi = o * stride, min(o * stride + 2, size)
            outs.append(x.narrow(d, lo, hi - lo).sum(d) / (hi - lo))
        x = torch.stack(outs, dim=d)
    return x


def _ref_ln(ln, t):
    mean = t.mean(-1, keepdim=True)
    var = ((t - mean) ** 2).mean(-1, keepdim=True)
    return (t - mean) / torch.sqrt(var + ln.eps) * ln.weight.double() + ln.bias.double()


def _moat_reference(m, x):
    x = x.double()
    shortcut = x
    if m.shortcut_pool is not None:
        shortcut = _ref_avgpool2_ceil(x, m.depthwise_conv.stride[0])
    if m.shortcut_conv is not None:
        shortcut = conv_reference(m.shortcut_conv, shortcut)
    y = ref_act("gelu", ref_bn(m.expand_norm, conv_reference(m.expand_conv, ref_bn(m.pre_norm, x))))
    y = ref_act("gelu", ref_bn(m.depthwise_norm, conv_reference(m.depthwise_conv, y)))
    y = conv_reference(m.shrink_conv, y) + shortcut
    n, c = y.shape[:2]
    t = y.reshape(n, c, -1).transpose(1, 2)
    t = t + ref_relattn_tokens(m.attention, _ref_ln(m.attention_norm, t))
    return t.transpose(1, 2).reshape(y.shape)


op("moat", Attr("out", "int", None, check=positive, doc="output channels (default: input channels)"),
   Attr("stride", "int", 1, check=_stride_12),
   Attr("heads", "int", None, check=positive, doc="default: out/32 when 32 divides out (head size 32), else 1"),
   Attr("expand", "int", 4, check=positive, doc="MBConv hidden width = expand * out"),
   Attr("rel_pos", "bool", True),
   Attr("bn_eps", "float", 1e-3, check=positive, doc="BatchNorm eps (1e-3: Keras' default, kept by the official code)"),
   shape=_moat_shape, params=_moat_params, macs=_moat_macs,
   torch=lambda a, ins: (MOAT, dict(ndim=_nd(ins), in_channels=ins[0][0], out_channels=a.out or ins[0][0],
                                    heads=_moat_heads(a, ins), size=_strided(ins, 3, a.stride), stride=a.stride,
                                    expand=a.expand, rel_pos=a.rel_pos, bn_eps=a.bn_eps)),
   reference=_moat_reference, spatial_dims=(1, 2), category="block",
   doc="MOAT block: MBConv (BN, 1x1 expand to expand * out, GELU, dw3 stride, 1x1 shrink; contains its residual, "
       "avgpool + 1x1 on the shortcut when strided / widened) then LN + global MHSA, heads out/32, with a "
       "(2H-1)(2W-1) relative position bias per head (contains its residual); no MLP.",
   examples=(({"heads": 2}, [(4, 5, 6)]), ({"out": 6, "stride": 2, "heads": 3}, [(4, 7, 6)]),
             ({"out": 4, "heads": 2, "expand": 2}, [(3, 9)]), ({"stride": 2, "rel_pos": False}, [(4, 11)])))


# ----------------------------------------------------------------------------------------------- lsconv
# LSNet "See Large, Focus Small" LS convolution (Wang et al. 2025; THU-MIG/lsnet model/lsnet.py LSConv, LKP,
# ska.py): large-kernel perception LKP = Conv-BN 1x1 C -> C/2, ReLU, depthwise Conv-BN k_large, Conv-BN 1x1,
# ReLU, 1x1 conv (bias) to k_small^d * C/groups weights, GroupNorm(C/groups groups); small-kernel aggregation
# SKA: out[c] = sum over the k_small window of x[c] * w[c mod (C/groups)] (each weight channel is shared by
# `groups` channels, official default 8), then BatchNorm, + x (the official LSConv includes the residual).


def conv_bn(conv, bn, cin, cout, k=1, groups=1):
    """LSNet's Conv2d_BN: conv (no bias) + BatchNorm, as a Sequential with children 'c' and 'bn'."""
    m = nn.Sequential()
    m.add_module("c", conv(cin, cout, k, padding=k // 2, groups=groups, bias=False))
    m.add_module("bn", bn(cout))
    return m


class LKP(nn.Module):
    """Large-kernel perception: per-position dynamic kernels (N, C/groups, k_small^d, *spatial)."""

    _emit_deps = (conv_bn,)

    def __init__(self, ndim, dim, k_large, k_small, groups):
        super().__init__()
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[ndim - 1]
        bn = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[ndim - 1]
        half, wc = dim // 2, dim // groups
        self.taps = k_small ** ndim
        self.cv1 = conv_bn(conv, bn, dim, half)
        self.act = nn.ReLU()
        self.cv2 = conv_bn(conv, bn, half, half, k_large, groups=half)
        self.cv3 = conv_bn(conv, bn, half, half)
        self.cv4 = conv(half, self.taps * wc, 1)
        self.norm = nn.GroupNorm(wc, self.taps * wc)

    def forward(self, x):
        w = self.norm(self.cv4(self.act(self.cv3(self.cv2(self.act(self.cv1(x)))))))
        return w.reshape(w.shape[0], -1, self.taps, *w.shape[2:])


class LSConv(nn.Module):
    """bn(SKA(x, LKP(x))) + x; SKA is a per-position k_small conv written as a batched matmul."""

    _emit_deps = (LKP, conv_bn)

    def __init__(self, ndim, dim, k_large=7, k_small=3, groups=8):
        super().__init__()
        self.lkp = LKP(ndim, dim, k_large, k_small, groups)
        self.bn = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[ndim - 1](dim)
        self.k_small, self.wc = k_small, dim // groups

    def ska(self, x, w):
        n, c, sizes = x.shape[0], x.shape[1], x.shape[2:]
        k, nd = self.k_small, len(sizes)
        xp = F.pad(x, [k // 2] * (2 * nd))
        taps = []
        for i in range(k ** nd):  # kernel offsets in row-major order, as the LKP weight layout
            offset = [(i // k ** (nd - 1 - d)) % k for d in range(nd)]
            taps.append(xp[(slice(None), slice(None)) + tuple(slice(o, o + s) for o, s in zip(offset, sizes))])
        patches = torch.stack(taps, dim=-1).reshape(n, c // self.wc, self.wc, -1, k ** nd).permute(0, 2, 3, 1, 4)
        w = w.reshape(n, self.wc, k ** nd, -1).permute(0, 1, 3, 2).unsqueeze(-1)  # (N, wc, positions, taps, 1)
        y = (patches @ w).squeeze(-1)  # (N, wc, positions, groups)
        return y.permute(0, 3, 1, 2).reshape(x.shape)

    def forward(self, x):
        return self.bn(self.ska(x, self.lkp(x))) + x


def _lsconv_shape(a, ins):
    need_spatial("lsconv", ins[0])
    c = ins[0][0]
    if c % 2 or c % a.groups:
        raise ArchError(f"lsconv(): needs even channels divisible by groups={a.groups}, got {c} channels "
                        f"(input shape {list(ins[0])})",
                        hint="LSConv halves the channels in its perception branch and shares each dynamic kernel "
                             "over `groups` channels; pick channels divisible by 2 and by groups")
    return tuple(ins[0])


def _lsconv_parts(a, ins):
    c, nd = ins[0][0], _nd(ins)
    return c, c // 2, a.k_small ** nd * (c // a.groups), a.k_large ** nd, a.k_small ** nd


def _lsconv_params(a, ins):
    c, half, wch, kl, _ = _lsconv_parts(a, ins)
    # cv1, cv2 (depthwise), cv3 convs each with a BN (2 * half); cv4 with bias; GroupNorm; the output BN
    return c * half + half * kl + half * half + 6 * half + half * wch + wch + 2 * wch + 2 * c


def _lsconv_macs(a, ins, out):
    c, half, wch, kl, ks = _lsconv_parts(a, ins)
    # the perception convs, then the dynamic aggregation: k_small^d MACs per output element
    return numel(ins[0][1:]) * (c * half + half * kl + half * half + half * wch + c * ks)


def _ref_gn(gn, x):
    n, c = x.shape[:2]
    g = x.reshape(n, gn.num_groups, -1)
    mean = g.mean(-1, keepdim=True)
    var = ((g - mean) ** 2).mean(-1, keepdim=True)
    y = ((g - mean) / torch.sqrt(var + gn.eps)).reshape(x.shape)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return y * gn.weight.double().reshape(shape) + gn.bias.double().reshape(shape)


def _lsconv_reference(m, x):
    x = x.double()
    lkp = m.lkp

    def cbn(seq, t):
        return ref_bn(seq.bn, conv_reference(seq.c, t))

    w = ref_act("relu", cbn(lkp.cv3, cbn(lkp.cv2, ref_act("relu", cbn(lkp.cv1, x)))))
    w = _ref_gn(lkp.norm, conv_reference(lkp.cv4, w))
    n, c, sizes = x.shape[0], x.shape[1], x.shape[2:]
    k = m.k_small
    w = w.reshape(n, m.wc, k ** len(sizes), *sizes)[:, torch.arange(c) % m.wc]  # channel c uses c mod wc
    xp = F.pad(x, [k // 2] * (2 * len(sizes)))
    y = torch.zeros_like(x)
    for i, offset in enumerate(kernel_offsets((k,) * len(sizes))):
        y += xp[(slice(None), slice(None)) + tuple(slice(o, o + s) for o, s in zip(offset, sizes))] * w[:, :, i]
    return ref_bn(m.bn, y) + x


op("lsconv", Attr("k_large", "int", 7, check=odd), Attr("k_small", "int", 3, check=odd),
   Attr("groups", "int", 8, check=positive, doc="channels sharing one dynamic kernel (C/groups kernels)"),
   shape=_lsconv_shape, params=_lsconv_params, macs=_lsconv_macs,
   torch=lambda a, ins: (LSConv, dict(ndim=_nd(ins), dim=ins[0][0], k_large=a.k_large, k_small=a.k_small,
                                      groups=a.groups)),
   reference=_lsconv_reference, spatial_dims=(1, 2, 3), category="mixer",
   doc="LSNet LS convolution: large-kernel depthwise perception predicts per-position k_small kernels shared "
       "by channel groups; dynamic aggregation, BN, + x.",
   examples=(({}, [(16, 7, 9)]), ({"groups": 2, "k_large": 5}, [(4, 13)]),
             ({"groups": 4, "k_small": 5}, [(8, 6, 5)]),
             ({"groups": 2, "k_large": 3}, [(4, 3, 4, 5)])))


