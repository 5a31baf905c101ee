"""Normalization layers over the channel axis: bn, ln (ln2d), lnchw, gn, rmsnorm, grn (global response norm).

All take (N, C, *spatial) tensors whose channel axis is dim 1 (or plain (N, C) feature vectors), keep the
shape, and count 0 MACs (the papers count only conv / linear / matmul). The references recompute each
normalization in float64 from explicit mean / variance formulas, without torch's norm kernels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.registry import Attr, op, positive
from archdsl.ops.shapes import same_shape


class ChannelLayerNorm(nn.LayerNorm):
    """nn.LayerNorm over the channel axis (dim 1) at every position of (N, C, ...) tensors: the channels-first
    LayerNorm of ConvNeXt and MetaFormer ("LayerNorm2d"). On (N, C) it is plain nn.LayerNorm.

    Any memory layout gives the same values. The kernel reads the ``movedim(1, -1)`` view, which is contiguous
    for a channels-last-strided input (dwconv_cl's output, a fused block's): no copy; a contiguous NCHW input
    is copied once inside the kernel. The result is channels-last strided either way, the layout in which the
    pointwise linears that follow (``channel_linear`` in fused groups) need no copy either."""

    def forward(self, x):
        if x.dim() == 2:
            return super().forward(x)
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class ChannelRMSNorm(nn.RMSNorm):
    """nn.RMSNorm over the channel axis (dim 1) at every position of (N, C, ...) tensors."""

    def forward(self, x):
        if x.dim() == 2:
            return super().forward(x)
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class GroupNormScaleOnly(nn.Module):
    """GroupNorm with a per-channel scale and no shift (nn.GroupNorm's affine has both or neither)."""

    def __init__(self, num_groups, num_channels, eps=1e-5):
        super().__init__()
        self.num_groups = num_groups
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))

    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight, None, self.eps)


def _same(a, ins):
    return tuple(ins[0])


def _per_channel(t, x):
    """A (C,) tensor shaped to broadcast over the channel axis (dim 1) of x."""
    return t.double().reshape(1, -1, *([1] * (x.dim() - 2)))


def _affine(m, y, x):
    w, b = getattr(m, "weight", None), getattr(m, "bias", None)
    if w is not None:
        y = y * _per_channel(w, x)
    if b is not None:
        y = y + _per_channel(b, x)
    return y


def _standardize(x, dims, eps):
    """(x - mean) / sqrt(biased variance + eps) over dims, from the textbook formulas."""
    count = 1
    for d in dims:
        count *= x.shape[d]
    mean = x.sum(dims, keepdim=True) / count
    var = ((x - mean) ** 2).sum(dims, keepdim=True) / count
    return (x - mean) / torch.sqrt(var + eps)


# ---- bn ------------------------------------------------------------------------------------------------

_BN = {0: nn.BatchNorm1d, 1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def _bn_shape(a, ins):
    if len(ins[0]) - 1 not in _BN:
        raise ArchError(f"bn needs (C,), (C, L), (C, H, W) or (C, D, H, W) input, got shape {list(ins[0])}")
    return tuple(ins[0])


def _bn_reference(m, x):
    x = x.double()
    dims = [0, *range(2, x.dim())]
    if m.training or m.running_mean is None:  # batch statistics
        y = _standardize(x, dims, m.eps)
    else:  # running statistics
        y = (x - _per_channel(m.running_mean, x)) / torch.sqrt(_per_channel(m.running_var, x) + m.eps)
    return _affine(m, y, x)


op("bn",
   Attr("eps", "float", 1e-5, check=positive),
   Attr("momentum", "float", 0.1, check=lambda v: None if 0.0 <= v <= 1.0 else "must be in [0, 1]"),
   Attr("affine", "bool", True),
   shape=_bn_shape,
   params=lambda a, ins: 2 * ins[0][0] if a.affine else 0,
   torch=lambda a, ins: (_BN[len(ins[0]) - 1],
                         dict(num_features=ins[0][0], eps=a.eps, momentum=a.momentum, affine=a.affine)),
   reference=_bn_reference,
   doc="BatchNorm over the channel axis (BatchNorm1d for (C,) and (C, L), 2d, 3d).", fusable=True,
   triton_declined="an eval BatchNorm is folded into the preceding conv by the fold pass; a training one needs "
                   "batch statistics (a reduction over N and positions)",
   examples=(({}, [(3,)]), ({"eps": 1e-3, "momentum": 0.3}, [(4, 7)]), ({}, [(3, 5, 7)]),
             ({"affine": False}, [(2, 3, 5, 3)])))


# ---- ln / ln2d -----------------------------------------------------------------------------------------

def _ln_reference(m, x):
    x = x.double()
    return _affine(m, _standardize(x, [1], m.eps), x)


op("ln",
   Attr("eps", "float", 1e-5, check=positive),
   Attr("bias", "bool", True, doc="false: the weight-only LayerNorm of MetaFormer"),
   shape=_same,
   params=lambda a, ins: ins[0][0] * (2 if a.bias else 1),
   torch=lambda a, ins: (ChannelLayerNorm, dict(normalized_shape=ins[0][0], eps=a.eps, bias=a.bias)),
   reference=_ln_reference, aliases=("ln2d",),
   doc="LayerNorm over the channel axis at every position (channels-first LN; plain LN on (C,)).",
   fusable=True, triton="norm",
   examples=(({}, [(5,)]), ({"bias": False}, [(4, 7)]), ({"eps": 1e-6}, [(3, 5, 7)])))


# ---- lnchw / gn ----------------------------------------------------------------------------------------

def _gn_reference(m, x):
    """Normalize each sample's channel groups jointly (channels of a group x all positions)."""
    x = x.double()
    n, g = x.shape[0], m.num_groups
    grouped = x.reshape(n, g, -1)
    y = _standardize(grouped, [2], m.eps).reshape(x.shape)
    return _affine(m, y, x)


def _lnchw_torch(a, ins):
    c = ins[0][0]
    if a.bias:
        return nn.GroupNorm, dict(num_groups=1, num_channels=c, eps=a.eps)
    return GroupNormScaleOnly, dict(num_groups=1, num_channels=c, eps=a.eps)


op("lnchw",
   Attr("eps", "float", 1e-5, check=positive),
   Attr("bias", "bool", True),
   shape=_same,
   params=lambda a, ins: ins[0][0] * (2 if a.bias else 1),
   torch=_lnchw_torch, reference=_gn_reference,
   doc="LayerNorm over all of (C, H, W) jointly with a per-channel affine, i.e. GroupNorm(1, C).", fusable=True,
   triton_declined="lnchw normalizes over (C, H, W) jointly (a two-pass reduction over the whole map); no kernel",
   examples=(({}, [(5,)]), ({}, [(3, 7)]), ({"bias": False}, [(3, 5, 7)])))


def _gn_shape(a, ins):
    c = ins[0][0]
    if c % a.groups:
        raise ArchError(f"gn(): groups={a.groups} does not divide the {c} channels (input shape {list(ins[0])})",
                        hint="choose groups that divides the channel count")
    return tuple(ins[0])


op("gn",
   Attr("groups", "int", check=positive),
   Attr("eps", "float", 1e-5, check=positive),
   Attr("affine", "bool", True),
   shape=_gn_shape,
   params=lambda a, ins: 2 * ins[0][0] if a.affine else 0,
   torch=lambda a, ins: (nn.GroupNorm, dict(num_groups=a.groups, num_channels=ins[0][0], eps=a.eps,
                                            affine=a.affine)),
   reference=_gn_reference,
   doc="GroupNorm(groups, C).", fusable=True,
   triton_declined="GroupNorm reduces over channel groups and all positions (a two-pass reduction); no kernel",
   examples=(({"groups": 2}, [(4,)]), ({"groups": 3}, [(6, 7)]), ({"groups": 2, "affine": False}, [(4, 5, 3)]),
             ({"groups": 1}, [(3, 5, 7)])))


# ---- rmsnorm -------------------------------------------------------------------------------------------

def _rms_reference(m, x):
    x = x.double()
    mean_square = (x * x).sum(1, keepdim=True) / x.shape[1]
    return _affine(m, x / torch.sqrt(mean_square + m.eps), x)


op("rmsnorm",
   Attr("eps", "float", 1e-6, check=positive),
   shape=_same,
   params=lambda a, ins: ins[0][0],
   torch=lambda a, ins: (ChannelRMSNorm, dict(normalized_shape=ins[0][0], eps=a.eps)),
   reference=_rms_reference,
   doc="RMSNorm over the channel axis at every position, with a per-channel scale.", fusable=True,
   triton="norm",
   examples=(({}, [(5,)]), ({"eps": 1e-5}, [(3, 7)]), ({}, [(4, 5, 3)])))


# -------------------------------------------------------------------------------------------------- grn
# ConvNeXt-V2 Global Response Normalization (Woo et al. 2023; facebookresearch/ConvNeXt-V2 models/utils.py GRN):
# Gx = ||x||_2 over the spatial positions per channel, Nx = Gx / (mean_c Gx + 1e-6),
# y = gamma * (x * Nx) + beta + x, gamma and beta per channel, initialised to zero.


class GRN(nn.Module):
    """Global response normalization on channels-first inputs."""

    def __init__(self, dim, eps=1e-6, bias=True):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(dim))
        # bias=False: UniRepLKNet's deploy form, where fold_grn_bias moved beta into the next linear layer
        self.beta = nn.Parameter(torch.zeros(dim)) if bias else None
        self.eps = eps

    def forward(self, x):
        gx = torch.linalg.vector_norm(x.flatten(2), dim=-1)  # (N, C)
        nx = gx / (gx.mean(dim=1, keepdim=True) + self.eps)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        nx = nx.reshape(*nx.shape, *([1] * (x.dim() - 2)))
        out = self.gamma.reshape(shape) * (x * nx) + x
        return out + self.beta.reshape(shape) if self.beta is not None else out


def _grn_reference(m, x):
    x = x.double()
    n, c = x.shape[:2]
    t = x.reshape(n, c, -1)
    gx = torch.sqrt(sum(t[..., i] ** 2 for i in range(t.shape[-1])))
    nx = gx / (sum(gx[:, j] for j in range(c)).unsqueeze(1) / c + m.eps)
    out = torch.empty_like(t)
    for j in range(c):
        beta = m.beta[j].double() if m.beta is not None else 0.0
        out[:, j] = m.gamma[j].double() * t[:, j] * nx[:, j:j + 1] + beta + t[:, j]
    return out.reshape(x.shape)


op("grn", Attr("bias", "bool", True, doc="false: no beta (UniRepLKNet's deploy form folds it into the next linear)"),
   shape=same_shape("grn"), params=lambda a, ins: (2 if a.bias else 1) * ins[0][0],
   torch=lambda a, ins: (GRN, dict(dim=ins[0][0], bias=a.bias)), reference=_grn_reference,
   spatial_dims=(1, 2, 3), category="norm",
   doc="ConvNeXt-V2 global response normalization: gamma * (x * Nx) + beta + x, Nx = ||x|| / mean_c ||x||.",
   examples=(({}, [(5, 4, 7)]), ({}, [(3, 9)]), ({}, [(2, 1, 1)]), ({"bias": False}, [(3, 2, 3, 4)])))
