"""Convolutional token mixers: wconv, replk, dilreparam, inceptiondw, gnconv (dcls lives in dcls.py).

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
from archdsl.ops.conv_algebra import bn_affine, dilate, pad_centred, scale_out
from archdsl.ops.registry import Attr, Fold, op, positive
from archdsl.ops.shapes import conv_shape, need_spatial, numel, resolve_padding


def _odd(name, what, ks, in_shape):
    ks = ks if isinstance(ks, (list, tuple)) else (ks,)
    if any(k % 2 == 0 for k in ks):
        raise ArchError(f"{name}(): {what} must be odd so every branch keeps the size, got {list(ks)} "
                        f"(input shape {list(in_shape)})", hint="use an odd kernel size")


def bn_reference(bn, y):
    """BatchNorm written out (float64): batch statistics in training mode, running statistics otherwise."""
    y = y.double()
    dims = [0] + list(range(2, y.dim()))
    shape = (1, -1) + (1,) * (y.dim() - 2)
    if bn.training or bn.running_mean is None:
        mean, var = y.mean(dims), y.var(dims, unbiased=False)
    else:
        mean, var = bn.running_mean.double(), bn.running_var.double()
    y = (y - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + bn.eps)
    return y * bn.weight.double().reshape(shape) + bn.bias.double().reshape(shape)


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


def _kernel_cells(ks):
    if not ks:
        yield ()
        return
    for i in range(ks[0]):
        for rest in _kernel_cells(ks[1:]):
            yield (i, *rest)


def wconv_reference(m, x):
    w = m.weight.detach().double().clone()
    for cell in _kernel_cells(m.kernel_size):  # weight each kernel cell by its density, one cell at a time
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


# ---------------------------------------------------------------------------------------------- replk
# Ding et al., "Scaling Up Your Kernels to 31x31" (RepLKNet); official DingXiaoH/RepLKNet-pytorch
# ReparamLargeKernelConv (train-time form): lkb_origin = conv(k, no bias) + bn, small_conv = conv(small) + bn,
# both depthwise with padding k//2 and the same stride, summed. Names kept so a reparam pass can fold them.

class RepLKConv(nn.Module):
    """RepLKNet large-kernel depthwise conv + parallel small-kernel depthwise conv, each with BN, summed."""

    def __init__(self, channels, kernel_size, small_kernel, stride):
        super().__init__()
        nd = len(kernel_size)
        conv_cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[nd - 1]
        bn_cls = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[nd - 1]
        self.kernel_size, self.small_kernel = tuple(kernel_size), small_kernel
        self.lkb_origin = nn.Sequential()
        self.lkb_origin.add_module("conv", conv_cls(channels, channels, kernel_size, stride,
                                                    tuple(k // 2 for k in kernel_size), groups=channels, bias=False))
        self.lkb_origin.add_module("bn", bn_cls(channels))
        if small_kernel is not None:
            self.small_conv = nn.Sequential()
            self.small_conv.add_module("conv", conv_cls(channels, channels, small_kernel, stride,
                                                        tuple(k // 2 for k in small_kernel), groups=channels,
                                                        bias=False))
            self.small_conv.add_module("bn", bn_cls(channels))

    def forward(self, x):
        out = self.lkb_origin(x)
        if hasattr(self, "small_conv"):
            out = out + self.small_conv(x)
        return out


def _small(a):
    return None if not a.small else (a.small,) * len(a.k)


def replk_shape(a, ins):
    need_spatial("replk", ins[0])
    _odd("replk", "kernel sizes", a.k, ins[0])
    if a.small:
        _odd("replk", "the small kernel", a.small, ins[0])
        if any(a.small > k for k in a.k):
            raise ArchError(f"replk(): small kernel {a.small} must not exceed the large kernel {list(a.k)} "
                            f"(input shape {list(ins[0])})", hint="re-param adds the small kernel to the centre")
    return conv_shape("replk", ins[0], ins[0][0], a.k, a.stride, None, (1,) * len(a.k))


def replk_params(a, ins):
    # C*prod(k) + C*small^d (depthwise, no bias) + 2C per BN (weight, bias; running stats are buffers).
    c = ins[0][0]
    small = _small(a)
    return c * math.prod(a.k) + 2 * c + ((c * math.prod(small) + 2 * c) if small else 0)


def replk_macs(a, ins, out):
    small = _small(a)
    return numel(out) * (math.prod(a.k) + (math.prod(small) if small else 0))


def _branch_reference(seq, x):
    return bn_reference(seq.bn, conv_reference(seq.conv, x))


def conv_bn_kernel(conv, bn, size, dilation=None):
    """A bias-free conv + eval BN branch as (kernel zero-padded to `size`, centred; bias), in float64."""
    w = conv.weight.double()
    if dilation is not None:
        w = dilate(w, dilation)
    s, t = bn_affine(bn.state_dict(), bn.eps)
    w, b = scale_out(w, None, s, t)
    return pad_centred(w, size), b


def replk_kernel(m):
    # lkb_origin (conv k + bn) + small_conv (conv small + bn) -> one depthwise conv k with bias
    w, b = conv_bn_kernel(m.lkb_origin.conv, m.lkb_origin.bn, m.kernel_size)
    if hasattr(m, "small_conv"):
        ws, bs = conv_bn_kernel(m.small_conv.conv, m.small_conv.bn, m.kernel_size)
        w, b = w + ws, b + bs
    return w, b


def replk_reference(m, x):
    y = _branch_reference(m.lkb_origin, x)
    if hasattr(m, "small_conv"):
        y = y + _branch_reference(m.small_conv, x)
    return y


op("replk",
   Attr("k", "ints", 31, check=positive, doc="large kernel (odd)"),
   Attr("small", "int", 5, check=lambda v: None if v >= 0 else "must be zero or more",
        doc="parallel small kernel (odd; 0 = none)"),
   Attr("stride", "ints", 1, check=positive),
   shape=replk_shape, params=replk_params, macs=replk_macs,
   torch=lambda a, ins: (RepLKConv, dict(channels=ins[0][0], kernel_size=tuple(a.k), small_kernel=_small(a),
                                         stride=tuple(a.stride))),
   reference=replk_reference, category="mixer", spatial_dims=(1, 2, 3),
   fold=Fold("reparam_branches", lambda a, ins: dict(out=ins[0][0], k=a.k, stride=a.stride,
                                                     padding=tuple(k // 2 for k in a.k), groups=ins[0][0], bias=True),
             replk_kernel),
   doc="RepLKNet re-parameterisable large-kernel depthwise conv (train-time form: k and small branches + BN).",
   examples=(({"k": 9, "small": 3}, [(3, 11, 10)]), ({"k": 13, "stride": 2}, [(4, 15)]),
             ({"k": [7, 5], "small": 3, "stride": [2, 1]}, [(2, 9, 6)])))


# ----------------------------------------------------------------------------------------- dilreparam
# Ding et al., UniRepLKNet; official AILab-CVC/UniRepLKNet DilatedReparamBlock (train-time form):
# lk_origin (k, no bias) + origin_bn, plus dil_conv_k{k}_{r} + dil_bn_k{k}_{r} per (kernel, dilation)
# branch, all depthwise, stride 1, padding (r*(k-1)+1)//2, summed. Branch lists per k from the official code.

DILREPARAM_BRANCHES = {
    17: ((5, 9, 3, 3, 3), (1, 2, 4, 5, 7)),
    15: ((5, 7, 3, 3, 3), (1, 2, 3, 5, 7)),
    13: ((5, 7, 3, 3, 3), (1, 2, 3, 4, 5)),
    11: ((5, 5, 3, 3, 3), (1, 2, 3, 4, 5)),
    9: ((5, 5, 3, 3), (1, 2, 3, 4)),
    7: ((5, 3, 3), (1, 2, 3)),
    5: ((3, 3), (1, 2)),
}


class DilatedReparamConv(nn.Module):
    """UniRepLKNet dilated reparam block: large depthwise kernel + dilated small depthwise kernels, each + BN."""

    def __init__(self, channels, kernel_size, kernels, dilations, ndim):
        super().__init__()
        conv_cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[ndim - 1]
        bn_cls = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[ndim - 1]
        self.kernel_size = kernel_size
        self.kernel_sizes, self.dilates = list(kernels), list(dilations)
        self.lk_origin = conv_cls(channels, channels, kernel_size, 1, kernel_size // 2, groups=channels, bias=False)
        self.origin_bn = bn_cls(channels)
        for k, r in zip(self.kernel_sizes, self.dilates):
            setattr(self, f"dil_conv_k{k}_{r}", conv_cls(channels, channels, k, 1, (r * (k - 1) + 1) // 2,
                                                         dilation=r, groups=channels, bias=False))
            setattr(self, f"dil_bn_k{k}_{r}", bn_cls(channels))

    def forward(self, x):
        out = self.origin_bn(self.lk_origin(x))
        for k, r in zip(self.kernel_sizes, self.dilates):
            out = out + getattr(self, f"dil_bn_k{k}_{r}")(getattr(self, f"dil_conv_k{k}_{r}")(x))
        return out


def _dil_branches(a, ins):
    shape = list(ins[0])
    if (a.kernels is None) != (a.dilations is None):
        raise ArchError("dilreparam(): give both kernels and dilations, or neither", hint="e.g. kernels=[5, 3], "
                        "dilations=[1, 2]")
    if a.kernels is None:
        if a.k not in DILREPARAM_BRANCHES:
            raise ArchError(f"dilreparam(): no default branches for k={a.k} (input shape {shape})",
                            hint=f"use k in {sorted(DILREPARAM_BRANCHES)} or give kernels= and dilations=")
        return DILREPARAM_BRANCHES[a.k]
    ks, rs = a.kernels, a.dilations
    if not all(isinstance(v, (list, tuple)) for v in (ks, rs)) or len(ks) != len(rs) or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in (*ks, *rs)):
        raise ArchError(f"dilreparam(): kernels and dilations must be equally long lists of positive integers, "
                        f"got {ks!r} and {rs!r}")
    if len(set(zip(ks, rs))) != len(ks):
        raise ArchError(f"dilreparam(): (kernel, dilation) pairs must be distinct, got {list(zip(ks, rs))}")
    for k, r in zip(ks, rs):
        _odd("dilreparam", "branch kernels", k, shape)
        if r * (k - 1) + 1 > a.k:
            raise ArchError(f"dilreparam(): branch kernel {k} with dilation {r} spans {r * (k - 1) + 1} > k={a.k} "
                            f"(input shape {shape})", hint="every branch must fit inside the large kernel")
    return tuple(ks), tuple(rs)


def dilreparam_shape(a, ins):
    need_spatial("dilreparam", ins[0])
    _odd("dilreparam", "k", a.k, ins[0])
    _dil_branches(a, ins)
    nd = len(ins[0]) - 1
    return conv_shape("dilreparam", ins[0], ins[0][0], (a.k,) * nd, (1,) * nd, None, (1,) * nd)


def dilreparam_params(a, ins):
    # C*k^d + 2C (origin conv + BN) + sum over branches (C*k_i^d + 2C).
    c, nd = ins[0][0], len(ins[0]) - 1
    ks, _ = _dil_branches(a, ins)
    return c * a.k ** nd + 2 * c + sum(c * k ** nd + 2 * c for k in ks)


def dilreparam_macs(a, ins, out):
    nd = len(ins[0]) - 1
    ks, _ = _dil_branches(a, ins)
    return numel(out) * (a.k ** nd + sum(k ** nd for k in ks))


def dilreparam_torch(a, ins):
    ks, rs = _dil_branches(a, ins)
    return DilatedReparamConv, dict(channels=ins[0][0], kernel_size=a.k, kernels=tuple(ks), dilations=tuple(rs),
                                    ndim=len(ins[0]) - 1)


def dilreparam_kernel(m):
    # lk_origin + origin_bn + sum over (k_i, r_i) of dil_conv_k{k}_{r} + dil_bn_k{k}_{r} -> one depthwise conv k
    size, nd = m.lk_origin.kernel_size, len(m.lk_origin.kernel_size)
    w, b = conv_bn_kernel(m.lk_origin, m.origin_bn, size)
    for k, r in zip(m.kernel_sizes, m.dilates):
        wi, bi = conv_bn_kernel(getattr(m, f"dil_conv_k{k}_{r}"), getattr(m, f"dil_bn_k{k}_{r}"), size, (r,) * nd)
        w, b = w + wi, b + bi
    return w, b


def dilreparam_reference(m, x):
    y = bn_reference(m.origin_bn, conv_reference(m.lk_origin, x))
    for k, r in zip(m.kernel_sizes, m.dilates):
        y = y + bn_reference(getattr(m, f"dil_bn_k{k}_{r}"), conv_reference(getattr(m, f"dil_conv_k{k}_{r}"), x))
    return y


op("dilreparam",
   Attr("k", "int", 13, check=positive, doc="large kernel (odd)"),
   Attr("kernels", "any", None, doc="branch kernel sizes; default per k from the official code"),
   Attr("dilations", "any", None, doc="branch dilations, one per kernel"),
   shape=dilreparam_shape, params=dilreparam_params, macs=dilreparam_macs, torch=dilreparam_torch,
   reference=dilreparam_reference, category="mixer", spatial_dims=(1, 2, 3),
   fold=Fold("reparam_branches", lambda a, ins: dict(out=ins[0][0], k=a.k, groups=ins[0][0], bias=True),
             dilreparam_kernel),
   doc="UniRepLKNet dilated reparam block (train-time form): large dw kernel + dilated small dw kernels, + BN.",
   examples=(({"k": 7}, [(3, 9, 8)]), ({"k": 13}, [(2, 17)]),
             ({"k": 9, "kernels": [3, 5], "dilations": [4, 1]}, [(2, 7, 11)])))


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
    _odd("inceptiondw", "kernel sizes", (a.k_sq, a.band_k), ins[0])
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
    _odd("gnconv", "the depthwise kernel", a.k, ins[0])
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
