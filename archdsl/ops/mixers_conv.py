"""Convolutional token mixers: wconv, inceptiondw, gnconv (dcls: dcls.py; replk, dilreparam: reparam_conv.py).

Each follows its official code (named per op below) for structure, submodule names, defaults and init.
MACs count conv / linear MACs only: BatchNorm, gating products, splits and the density multiply are
elementwise and not counted (the papers' convention; torch's FlopCounterMode sees the same convs).
"""
from __future__ import annotations

import math
import types

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.conv import conv_reference
from archdsl.ops.references import kernel_offsets
from archdsl.ops.registry import Attr, Fold, op, positive
from archdsl.ops.shapes import conv_shape, need_odd, need_spatial, numel, resolve_padding


# ---------------------------------------------------------------------------------------------- wconv
# Cammarasana & Patane, "Optimal Weighted Convolution for Classification and Denoising"; official code
# cammarasana123/weightedConvolution2.0 (wConv.py): kernel = weight * Phi, Phi the outer product of a
# 1-D density profile over relative kernel positions; Phi is a fixed buffer (same params as a conv).


class WeightedConv(nn.Module):
    """Convolution whose kernel is multiplied by a fixed separable spatial density ``Phi`` (a buffer)."""

    def __init__(self, in_channels, out_channels, kernel_size, profiles, stride, padding, dilation, groups,
                 bias=False, pad=None):
        super().__init__()
        self.kernel_size = tuple(kernel_size)
        self.ndim = len(self.kernel_size)
        self.stride, self.padding, self.dilation = tuple(stride), tuple(padding), tuple(dilation)
        self.groups = groups
        self.profiles = tuple(tuple(float(v) for v in p) for p in profiles)
        self.pad = tuple(pad) if pad else None
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        # Official init: kaiming_normal_(fan_out, relu), bias zeros.
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        # Phi is built in float64 (exact products of the profile values) and cast to the weight's dtype in use.
        phi = torch.ones((), dtype=torch.float64)
        for p in self.profiles:
            phi = phi.unsqueeze(-1) * torch.tensor(p, dtype=torch.float64)
        self.register_buffer("Phi", phi)

    def forward(self, x):
        if self.pad is not None:
            x = F.pad(x, self.pad)
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.ndim - 1]
        return conv(x, self.weight * self.Phi.to(self.weight.dtype), self.bias, self.stride, self.padding, self.dilation, self.groups)


def _wconv_profiles(a, ins):
    """Per-dim full profiles. A density of length k//2 is the official half profile, outermost value first,
    mirrored around a centre of 1.0 ([d1..dm, 1, dm..d1]); a density of length k is used as given; None is
    all ones (a plain conv)."""
    out = []
    for k in a.k:
        den = a.density
        if den is None:
            out.append((1.0,) * k)
        elif len(den) == k:
            out.append(tuple(den))
        elif k % 2 and len(den) == k // 2:
            out.append(tuple(den) + (1.0,) + tuple(reversed(den)))
        else:
            raise ArchError(
                f"wconv(): density has {len(den)} values but kernel {list(a.k)} needs {k} per dim (a full "
                f"profile) or {k // 2} (a half profile, odd k) (input shape {list(ins[0])})",
                hint="for 7x7: density=[0.25, 0.15, 0.55] (outer to inner; the centre is 1)")
    return tuple(out)


def _wconv_facts(a, ins):
    return ins[0][0], a.out, a.groups


def wconv_shape(a, ins):
    need_spatial("wconv", ins[0])
    c, out, g = _wconv_facts(a, ins)
    if c % g or out % g:
        raise ArchError(f"wconv(): groups={g} must divide input channels {c} and output channels {out} "
                        f"(input shape {list(ins[0])})", hint="choose channels divisible by groups")
    _wconv_profiles(a, ins)
    return conv_shape("wconv", ins[0], out, a.k, a.stride, a.padding, a.dilation)


def wconv_torch(a, ins):
    c, out, g = _wconv_facts(a, ins)
    pads = resolve_padding("wconv", a.padding, a.k, a.stride, a.dilation)
    symmetric = all(lo == hi for lo, hi in pads)
    return WeightedConv, dict(
        in_channels=c, out_channels=out, kernel_size=tuple(a.k), profiles=_wconv_profiles(a, ins),
        stride=tuple(a.stride), padding=tuple(lo for lo, _ in pads) if symmetric else (0,) * len(a.k),
        dilation=tuple(a.dilation), groups=g, bias=a.bias,
        pad=None if symmetric else tuple(p for lo_hi in reversed(pads) for p in lo_hi))


def wconv_reference(m, x):
    w = m.weight.detach().double().clone()
    for cell in kernel_offsets(m.kernel_size):  # weight each kernel cell by its density, one cell at a time
        w[(slice(None), slice(None), *cell)] *= math.prod(p[i] for p, i in zip(m.profiles, cell))
    if m.pad is not None:
        x = F.pad(x.double(), m.pad)
    conv = types.SimpleNamespace(weight=w, bias=m.bias, padding=m.padding, groups=m.groups,
                                 kernel_size=m.kernel_size, stride=m.stride, dilation=m.dilation)
    return conv_reference(conv, x)


op("wconv",
   Attr("out", "int", check=positive, doc="output channels"),
   Attr("k", "ints", 3, check=positive),
   Attr("density", "floats", None, doc="half profile (k//2, outer first; centre 1) or full profile (k)"),
   Attr("stride", "ints", 1, check=positive),
   Attr("padding", "any", None, doc="as conv: int, list, 'same', 'valid'; default keeps the size for odd k"),
   Attr("dilation", "ints", 1, check=positive),
   Attr("groups", "int", 1, check=positive),
   Attr("bias", "bool", False, doc="official default: no bias"),
   shape=wconv_shape,
   params=lambda a, ins: a.out * (ins[0][0] // a.groups) * math.prod(a.k) + (a.out if a.bias else 0),
   # Same MACs as the plain conv: out_numel * in/groups * prod(k); weight * Phi is elementwise, per call.
   macs=lambda a, ins, out: numel(out) * (ins[0][0] // a.groups) * math.prod(a.k),
   torch=wconv_torch, reference=wconv_reference, category="mixer", spatial_dims=(1, 2, 3),
   # at deploy: conv(k) with weight * Phi as its kernel (the fixed density folded in)
   fold=Fold("fold_kernels", lambda a, ins: dict(out=a.out, k=a.k, stride=a.stride, padding=a.padding,
                                                 dilation=a.dilation, groups=a.groups, bias=a.bias),
             lambda m: (m.weight * m.Phi, m.bias)),
   doc="Optimal weighted convolution: a conv whose kernel is scaled by a fixed separable spatial density.",
   examples=(({"out": 4, "k": 3, "density": [0.7]}, [(3, 9, 7)]),
             ({"out": 3, "k": 5, "density": [0.2, 0.8], "bias": True, "stride": 2}, [(2, 13)]),
             ({"out": 4, "k": [3, 4], "groups": 2, "padding": "same"}, [(2, 7, 8)]),
             ({"out": 2, "k": 3, "density": [0.5, 1.5, 0.9], "dilation": 2}, [(3, 9, 11)])))


# ---------------------------------------------------------------------------------------- inceptiondw
# Yu et al., InceptionNeXt; official sail-sg/inceptionnext InceptionDWConv2d: gc = int(C * branch_ratio);
# split (C - 3gc, gc, gc, gc) = (identity, square k_sq, 1 x band_k, band_k x 1), dw convs with bias, concat
# in that order. 1-D: (C - 2gc, gc, gc) = (identity, k_sq, band_k).


class InceptionDWConv(nn.Module):
    """Inception depthwise conv: identity / square / two orthogonal band kernels on channel groups."""

    def __init__(self, channels, square_kernel, band_kernel, branch_channels, ndim):
        super().__init__()
        gc, sq, band = branch_channels, square_kernel, band_kernel
        self.ndim = ndim
        if ndim == 2:
            self.dwconv_hw = nn.Conv2d(gc, gc, sq, padding=sq // 2, groups=gc)
            self.dwconv_w = nn.Conv2d(gc, gc, (1, band), padding=(0, band // 2), groups=gc)
            self.dwconv_h = nn.Conv2d(gc, gc, (band, 1), padding=(band // 2, 0), groups=gc)
            self.split_indexes = (channels - 3 * gc, gc, gc, gc)
        else:
            self.dwconv_sq = nn.Conv1d(gc, gc, sq, padding=sq // 2, groups=gc)
            self.dwconv_band = nn.Conv1d(gc, gc, band, padding=band // 2, groups=gc)
            self.split_indexes = (channels - 2 * gc, gc, gc)

    def branches(self):
        if self.ndim == 2:
            return [self.dwconv_hw, self.dwconv_w, self.dwconv_h]
        return [self.dwconv_sq, self.dwconv_band]

    def forward(self, x):
        parts = torch.split(x, self.split_indexes, dim=1)
        return torch.cat([parts[0]] + [conv(p) for conv, p in zip(self.branches(), parts[1:])], dim=1)


def _gc(a, ins):
    return int(ins[0][0] * a.branch_ratio)  # as the official code: int(C * branch_ratio)


def inceptiondw_shape(a, ins):
    need_spatial("inceptiondw", ins[0], dims=(1, 2))
    need_odd("inceptiondw", "kernel sizes", (a.k_sq, a.band_k), ins[0])
    c, gc, nb = ins[0][0], _gc(a, ins), len(ins[0])  # nb: conv branches (2 in 1-D, 3 in 2-D)
    if gc < 1 or c - nb * gc < 0:
        raise ArchError(
            f"inceptiondw(): branch_ratio={a.branch_ratio} gives {gc} channels per conv branch for {c} channels; "
            f"need 1 <= int(C*ratio) and {nb}*that <= C (input shape {list(ins[0])}, output shape {list(ins[0])})",
            hint=f"use at least {math.ceil(1 / a.branch_ratio)} channels or a larger branch_ratio (<= 1/{nb})")
    return tuple(ins[0])


def inceptiondw_params(a, ins):
    # 2-D: gc*(k_sq^2 + 1) + 2*gc*(band_k + 1); 1-D: gc*(k_sq + 1) + gc*(band_k + 1) (dw weights + biases).
    gc, nd = _gc(a, ins), len(ins[0]) - 1
    return gc * (a.k_sq ** nd + 1) + (2 if nd == 2 else 1) * gc * (a.band_k + 1)


def inceptiondw_macs(a, ins, out):
    gc, nd = _gc(a, ins), len(ins[0]) - 1
    return math.prod(out[1:]) * gc * (a.k_sq ** nd + (2 if nd == 2 else 1) * a.band_k)


def inceptiondw_reference(m, x):
    x = x.double()
    outs, start = [x[:, :m.split_indexes[0]]], m.split_indexes[0]
    for conv, size in zip(m.branches(), m.split_indexes[1:]):
        outs.append(conv_reference(conv, x[:, start:start + size]))
        start += size
    return torch.cat(outs, 1)


op("inceptiondw",
   Attr("k_sq", "int", 3, check=positive, doc="square kernel (official default 3)"),
   Attr("band_k", "int", 11, check=positive, doc="band kernel length (official default 11)"),
   Attr("branch_ratio", "float", 0.125, check=lambda v: None if 0 < v <= 0.5 else "must be in (0, 0.5]"),
   shape=inceptiondw_shape, params=inceptiondw_params, macs=inceptiondw_macs,
   torch=lambda a, ins: (InceptionDWConv, dict(channels=ins[0][0], square_kernel=a.k_sq, band_kernel=a.band_k,
                                               branch_channels=_gc(a, ins), ndim=len(ins[0]) - 1)),
   reference=inceptiondw_reference, category="mixer", spatial_dims=(1, 2),
   doc="InceptionNeXt inception depthwise conv: identity / k_sq square / 1 x band / band x 1 on channel splits.",
   examples=(({}, [(17, 9, 13)]), ({"k_sq": 5, "band_k": 7, "branch_ratio": 0.25}, [(10, 7, 5)]),
             ({"band_k": 9}, [(16, 21)]), ({"branch_ratio": 1 / 3}, [(6, 5, 7)])))


# -------------------------------------------------------------------------------------------- gnconv
# Rao et al., HorNet; official raoyongming/HorNet gnconv: dims = [C // 2^i for i < order] reversed;
# proj_in 1x1 C -> 2C; split (dims[0], sum(dims)); dwconv k (groups = sum(dims), bias, pad (k-1)//2) * s;
# x = pwa * dw_0; x = pws[i](x) * dw_{i+1}; proj_out 1x1 C -> C. All convs keep torch's default bias.


class GnConv(nn.Module):
    """HorNet recursive gated convolution g^n Conv (1-3 spatial dims)."""

    def __init__(self, dim, order, kernel_size, scale, ndim):
        super().__init__()
        conv_cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[ndim - 1]
        self.order = order
        self.dims = [dim // 2 ** i for i in range(order)]
        self.dims.reverse()
        self.proj_in = conv_cls(dim, 2 * dim, 1)
        s = sum(self.dims)
        ks = tuple(kernel_size)
        self.dwconv = conv_cls(s, s, ks, padding=tuple((k - 1) // 2 for k in ks), groups=s, bias=True)
        self.proj_out = conv_cls(dim, dim, 1)
        self.pws = nn.ModuleList([conv_cls(self.dims[i], self.dims[i + 1], 1) for i in range(order - 1)])
        self.scale = scale

    def forward(self, x):
        pwa, abc = torch.split(self.proj_in(x), (self.dims[0], sum(self.dims)), dim=1)
        dw_list = torch.split(self.dwconv(abc) * self.scale, self.dims, dim=1)
        x = pwa * dw_list[0]
        for i in range(self.order - 1):
            x = self.pws[i](x) * dw_list[i + 1]
        return self.proj_out(x)


def gnconv_dims(c, order):
    return [c // 2 ** i for i in reversed(range(order))]


def gnconv_shape(a, ins):
    need_spatial("gnconv", ins[0])
    need_odd("gnconv", "the depthwise kernel", a.k, ins[0])
    c = ins[0][0]
    if c % 2 ** (a.order - 1):
        raise ArchError(f"gnconv(): order {a.order} halves the channels {a.order - 1} times, so C={c} must be "
                        f"divisible by {2 ** (a.order - 1)} (input shape {list(ins[0])}, output shape "
                        f"{list(ins[0])})", hint="use a lower order or a channel count divisible by 2^(order-1)")
    return tuple(ins[0])


def gnconv_params(a, ins):
    # proj_in C*2C + 2C; dwconv S*prod(k) + S (S = sum(dims)); pws sum(d_i*d_{i+1} + d_{i+1}); proj_out C*C + C.
    c = ins[0][0]
    dims = gnconv_dims(c, a.order)
    s = sum(dims)
    pws = sum(dims[i] * dims[i + 1] + dims[i + 1] for i in range(a.order - 1))
    return (2 * c * c + 2 * c) + (s * math.prod(a.k) + s) + pws + (c * c + c)


def gnconv_macs(a, ins, out):
    # Per output position: proj_in C*2C + dwconv S*prod(k) + pws sum(d_i*d_{i+1}) + proj_out C*C; gates free.
    c = ins[0][0]
    dims = gnconv_dims(c, a.order)
    per = 2 * c * c + sum(dims) * math.prod(a.k) + sum(dims[i] * dims[i + 1] for i in range(a.order - 1)) + c * c
    return math.prod(out[1:]) * per


def _pointwise_reference(conv, x):
    y = torch.einsum("nc...,oc->no...", x.double(), conv.weight.double().flatten(1))
    return y + conv.bias.double().reshape(1, -1, *([1] * (x.dim() - 2)))


def gnconv_reference(m, x):
    c = x.shape[1]
    dims = gnconv_dims(c, m.order)
    fused = _pointwise_reference(m.proj_in, x)
    pwa, abc = fused[:, :dims[0]], fused[:, dims[0]:]
    dw = conv_reference(m.dwconv, abc) * m.scale
    offsets = [sum(dims[:i]) for i in range(len(dims) + 1)]
    y = pwa * dw[:, offsets[0]:offsets[1]]
    for i in range(m.order - 1):
        y = _pointwise_reference(m.pws[i], y) * dw[:, offsets[i + 1]:offsets[i + 2]]
    return _pointwise_reference(m.proj_out, y)


op("gnconv",
   Attr("order", "int", 3, check=positive, doc="interaction order n"),
   Attr("k", "ints", 7, check=positive, doc="depthwise kernel (odd)"),
   Attr("s", "float", 1.0, doc="scale on the depthwise output (HorNet models use 1/3)"),
   shape=gnconv_shape, params=gnconv_params, macs=gnconv_macs,
   torch=lambda a, ins: (GnConv, dict(dim=ins[0][0], order=a.order, kernel_size=tuple(a.k), scale=a.s,
                                      ndim=len(ins[0]) - 1)),
   reference=gnconv_reference, category="mixer", spatial_dims=(1, 2, 3),
   doc="HorNet recursive gated convolution g^n Conv (proj_in, depthwise conv, recursive gates, proj_out).",
   examples=(({}, [(8, 9, 7)]), ({"order": 2, "k": 5, "s": 1 / 3}, [(6, 11)]),
             ({"order": 4, "k": [3, 5]}, [(16, 5, 7)]), ({"order": 1, "k": 3}, [(3, 5, 6)])))
