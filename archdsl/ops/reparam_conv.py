"""Re-parameterizable large-kernel convolutions, in their train-time form: replk (RepLKNet), dilreparam
(UniRepLKNet). Each is parallel depthwise conv + BN branches summed; at deploy the reparam_branches pass folds
them into one depthwise conv by the rule on their registration (Fold).

Each follows its official code (named per op below) for structure, submodule names, defaults and init. MACs
count the branch convs' MACs; BatchNorm and the sum are elementwise and not counted.
"""
from __future__ import annotations

import math

from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.conv import conv_reference
from archdsl.ops.conv_algebra import bn_affine, dilate, pad_centred, scale_out
from archdsl.ops.references import ref_bn
from archdsl.ops.registry import Attr, Fold, op, positive
from archdsl.ops.shapes import conv_shape, half_kernel, need_odd, need_spatial, numel


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
    need_odd("replk", "kernel sizes", a.k, ins[0])
    if a.small:
        need_odd("replk", "the small kernel", a.small, ins[0])
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
    return ref_bn(seq.bn, conv_reference(seq.conv, x))


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
                                                     padding=half_kernel(a.k), groups=ins[0][0], bias=True),
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
        need_odd("dilreparam", "branch kernels", k, shape)
        if r * (k - 1) + 1 > a.k:
            raise ArchError(f"dilreparam(): branch kernel {k} with dilation {r} spans {r * (k - 1) + 1} > k={a.k} "
                            f"(input shape {shape})", hint="every branch must fit inside the large kernel")
    return tuple(ks), tuple(rs)


def dilreparam_shape(a, ins):
    need_spatial("dilreparam", ins[0])
    need_odd("dilreparam", "k", a.k, ins[0])
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
    y = ref_bn(m.origin_bn, conv_reference(m.lk_origin, x))
    for k, r in zip(m.kernel_sizes, m.dilates):
        y = y + ref_bn(getattr(m, f"dil_bn_k{k}_{r}"), conv_reference(getattr(m, f"dil_conv_k{k}_{r}"), x))
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
