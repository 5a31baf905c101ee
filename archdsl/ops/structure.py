"""Structural ops: identity, layerscale, resscale, scale, flatten, reshape, permute, dropout, droppath, and the
upsamplers upsample, resize (to a fixed size) and subpixel (conv + pixel shuffle).

None of them does MACs but subpixel (its conv's). Dropout and droppath are random only in training; their references give the eval
behaviour (identity), which is what the registry tests compare.
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.conv import conv_reference
from archdsl.ops.references import kernel_offsets
from archdsl.ops.registry import Attr, op, positive, probability
from archdsl.ops.shapes import need_spatial, numel, odd


class ChannelScale(nn.Module):
    """Multiply each channel (dim 1) by a learnable factor: LayerScale (CaiT, ConvNeXt) and MetaFormer's
    residual scale."""

    def __init__(self, dim, init=1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x):
        return x * self.gamma.reshape(-1, *([1] * (x.dim() - 2)))


class ConstScale(nn.Module):
    """Multiply by a fixed number."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x):
        return x * self.value


class Reshape(nn.Module):
    """Reshape every sample to `shape` (the batch axis stays)."""

    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)


class Permute(nn.Module):
    """Permute the non-batch axes of every sample (`dims` indexes them from 0)."""

    def __init__(self, dims):
        super().__init__()
        self.dims = tuple(dims)

    def forward(self, x):
        return x.permute(0, *(d + 1 for d in self.dims))


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): in training, drop a whole sample with probability p and scale the
    kept ones by 1 / (1 - p), so the expectation is unchanged; identity in eval."""

    def __init__(self, p=0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


def _same(a, ins):
    return tuple(ins[0])


def _identity_reference(m, x):
    return x.double()


_ANY_RANK = (({}, [(5,)]), ({}, [(3, 7)]), ({}, [(4, 5, 3)]))

op("identity", shape=_same, torch=lambda a, ins: (nn.Identity, {}), reference=_identity_reference,
   doc="Pass the input through.", examples=_ANY_RANK, exact_in_any_dtype=True, triton="no_op")


def _scale_reference(m, x):
    x = x.double()
    return x * m.gamma.double().reshape(1, -1, *([1] * (x.dim() - 2)))


for _name, _init, _doc in (("layerscale", 1e-5, "Per-channel learnable scale gamma (LayerScale), init small."),
                           ("resscale", 1.0, "Per-channel learnable residual scale (MetaFormer res_scale).")):
    op(_name, Attr("init", "float", _init),
       shape=_same, params=lambda a, ins: ins[0][0],
       torch=lambda a, ins: (ChannelScale, dict(dim=ins[0][0], init=a.init)),
       reference=_scale_reference, doc=_doc, fusable=True, triton="channel_scale",
       examples=(({}, [(5,)]), ({"init": 0.5}, [(3, 7)]), ({}, [(4, 5, 3)])))

op("scale", Attr("value", "float"),
   shape=_same, torch=lambda a, ins: (ConstScale, dict(value=a.value)),
   reference=lambda m, x: x.double() * m.value, doc="Multiply by a constant (no parameters).",
   fusable=True, triton="const_scale",
   examples=(({"value": 0.5}, [(5,)]), ({"value": -2.0}, [(3, 7)]), ({"value": 3}, [(4, 5, 3)])))

def _flatten_range(a, ins):
    rank = len(ins[0])
    lo, hi = (v % rank if -rank <= v < rank else None for v in (a.start, a.end))
    if lo is None or hi is None or lo > hi:
        raise ArchError(f"flatten(): axes {a.start}..{a.end} are not a range of shape {list(ins[0])}",
                        hint=f"axes run 0..{rank - 1} (or -1..-{rank}), start before end; the batch is not an axis")
    return lo, hi


def _flatten_shape(a, ins):
    lo, hi = _flatten_range(a, ins)
    return (*ins[0][:lo], numel(ins[0][lo:hi + 1]), *ins[0][hi + 1:])


def _flatten_reference(m, x):
    x = x.double()
    lo, hi = m.start_dim, (m.end_dim if m.end_dim >= 0 else x.dim() + m.end_dim)
    shape = (*x.shape[:lo], numel(x.shape[lo:hi + 1]), *x.shape[hi + 1:])
    return torch.stack([v for v in x.reshape(-1)]).reshape(shape)  # row-major order, element by element


op("flatten", Attr("start", "int", 0), Attr("end", "int", -1),
   shape=_flatten_shape,
   torch=lambda a, ins: (nn.Flatten, dict(start_dim=1 + _flatten_range(a, ins)[0], end_dim=1 + _flatten_range(a, ins)[1])),
   reference=_flatten_reference,
   doc="Merge axes start..end (inclusive) into one; by default each sample becomes a vector (C * H * W,). "
       "flatten(1) turns an image (C, H, W) into tokens (C, H*W); flatten(0, 1) merges heads (h, d, N) -> (h*d, N).",
   examples=_ANY_RANK + (({"start": 1}, [(3, 4, 5)]), ({"start": 0, "end": 1}, [(2, 3, 4)]),
                         ({"start": -2}, [(2, 3, 4, 5)])), exact_in_any_dtype=True)


# ---- reshape / permute ---------------------------------------------------------------------------------

def _int_list(what):
    def check(v):
        if not isinstance(v, (list, tuple)) or not v:
            return f"must be a non-empty list of {what}"
        if any(isinstance(x, bool) or not isinstance(x, int) for x in v):
            return f"must be a list of {what}"
        return None

    return check


def _reshape_target(a, ins):
    shape = list(a.shape)
    if any(s == 0 or s < -1 for s in shape) or shape.count(-1) > 1:
        raise ArchError(f"reshape(): shape {shape} must hold positive sizes and at most one -1")
    known = math.prod(s for s in shape if s != -1)
    total = numel(ins[0])
    if -1 in shape and total % known == 0:
        shape[shape.index(-1)] = total // known
    if math.prod(shape) != total:
        raise ArchError(f"reshape(): cannot reshape {list(ins[0])} ({total} elements) to {list(a.shape)}",
                        hint="the new shape must hold the same number of elements (the batch is not included)")
    return tuple(shape)


op("reshape", Attr("shape", "any", check=_int_list("integers"), doc="new per-sample shape; one entry may be -1"),
   shape=_reshape_target, torch=lambda a, ins: (Reshape, dict(shape=_reshape_target(a, ins))),
   reference=lambda m, x: torch.stack([s.double().flatten().reshape(m.shape) for s in x]),
   doc="Reshape each sample (the element count must stay the same).", exact_in_any_dtype=True,
   examples=(({"shape": [5, 21]}, [(3, 5, 7)]), ({"shape": [3, -1]}, [(6, 5)]), ({"shape": [7, 1, 3]}, [(21,)])))


def _permute_shape(a, ins):
    dims = list(a.dims)
    if sorted(dims) != list(range(len(ins[0]))):
        raise ArchError(f"permute(): dims {dims} must be a permutation of 0..{len(ins[0]) - 1} "
                        f"for input shape {list(ins[0])}", hint="dims index the axes without the batch")
    return tuple(ins[0][d] for d in dims)


def _permute_reference(m, x):
    x = x.double()
    out = torch.empty(x.shape[0], *(x.shape[1 + d] for d in m.dims), dtype=torch.float64)
    for idx in itertools.product(*(range(s) for s in x.shape[1:])):  # out[..., idx[dims]] = x[..., idx]
        out[(slice(None), *(idx[d] for d in m.dims))] = x[(slice(None), *idx)]
    return out


op("permute", Attr("dims", "any", check=_int_list("axis numbers"), doc="a permutation of the non-batch axes"),
   shape=_permute_shape, torch=lambda a, ins: (Permute, dict(dims=tuple(a.dims))), reference=_permute_reference,
   doc="Permute the axes of each sample, e.g. permute([1, 2, 0]) turns (C, H, W) into (H, W, C).",
   exact_in_any_dtype=True,
   examples=(({"dims": [1, 2, 0]}, [(3, 5, 7)]), ({"dims": [1, 0]}, [(4, 9)]), ({"dims": [0]}, [(5,)])))


# ---- dropout / droppath --------------------------------------------------------------------------------

op("dropout", Attr("p", "float", check=probability),
   shape=_same, torch=lambda a, ins: (nn.Dropout, dict(p=a.p)), reference=_identity_reference,
   doc="Elementwise dropout (identity in eval).", triton="no_op",
   examples=(({"p": 0.1}, [(5,)]), ({"p": 0.5}, [(3, 7)]), ({"p": 0.0}, [(4, 5, 3)])))

op("droppath", Attr("p", "float", check=probability),
   shape=_same, torch=lambda a, ins: (DropPath, dict(p=a.p)), reference=_identity_reference,
   doc="Stochastic depth: drop whole samples of a residual branch in training (identity in eval).",
   triton="no_op",
   examples=(({"p": 0.1}, [(5,)]), ({"p": 0.5}, [(3, 7)]), ({"p": 0.2}, [(4, 5, 3)])))


# ---- upsample ------------------------------------------------------------------------------------------

_LINEAR_MODE = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _upsample_shape(a, ins):
    need_spatial("upsample", ins[0])
    return (ins[0][0], *(s * a.scale for s in ins[0][1:]))


def _upsample_torch(a, ins):
    nd = len(ins[0]) - 1
    if a.mode == "nearest":
        return nn.Upsample, dict(scale_factor=a.scale, mode="nearest")
    return nn.Upsample, dict(scale_factor=a.scale, mode=_LINEAR_MODE[nd], align_corners=False)


def _upsample_reference(m, x):
    """Separable per-dim resampling: nearest repeats each element; linear interpolates the two neighbours of
    the source coordinate (i + 0.5) / s - 0.5, clamped at the edges (align_corners=False)."""
    x = x.double()
    s = int(m.scale_factor)
    for dim in range(2, x.dim()):
        size = x.shape[dim]
        if m.mode == "nearest":
            x = x.repeat_interleave(s, dim)
            continue
        src = ((torch.arange(size * s, dtype=torch.float64) + 0.5) / s - 0.5).clamp(min=0.0)
        lo = src.floor().long()
        hi = (lo + 1).clamp(max=size - 1)
        frac = (src - lo).reshape(-1, *([1] * (x.dim() - 1 - dim)))
        x = x.index_select(dim, lo) * (1 - frac) + x.index_select(dim, hi) * frac
    return x


op("upsample", Attr("scale", "int", 2, check=positive), Attr("mode", "str", "nearest", choices=("nearest", "linear")),
   shape=_upsample_shape, torch=_upsample_torch, reference=_upsample_reference,
   spatial_dims=(1, 2, 3), min_input_rank=2,
   doc="Upsample every spatial dim by an integer factor (nearest, or (bi/tri)linear with align_corners=False).",
   examples=(({}, [(3, 4, 5)]), ({"mode": "linear"}, [(2, 5, 3)]), ({"scale": 3, "mode": "linear"}, [(3, 7)]),
             ({"scale": 3}, [(2, 5)]), ({"mode": "linear"}, [(2, 3, 2, 4)])))


# ---- resize ---------------------------------------------------------------------------------------------
# Resampling to a fixed size, as torch's interpolate with align_corners=False: CrossViT's large branch reads a
# 240 x 240 image bicubically resized to 224 x 224 (IBM/CrossViT models/crossvit.py `forward_features`).

_CUBIC_A = -0.75  # the cubic convolution constant of torch's (and OpenCV's) bicubic


def _resize_shape(a, ins):
    need_spatial("resize", ins[0], (1, 2))
    if a.mode == "cubic" and len(ins[0]) != 3:
        raise ArchError(f"resize(mode = \"cubic\") needs a 2-D input (C, H, W), got shape {list(ins[0])}",
                        hint="torch has bicubic only in 2-D; use mode = \"linear\" on sequences")
    return (ins[0][0], *a.size)


def _resize_torch(a, ins):
    mode = "bicubic" if a.mode == "cubic" else _LINEAR_MODE[len(ins[0]) - 1]
    return nn.Upsample, dict(size=tuple(a.size), mode=mode, align_corners=False)


def _resize_weights(n_in, n_out, cubic):
    """Dense (n_out, n_in) matrix of one axis: output i samples source coordinate (i + 0.5) n_in / n_out - 0.5;
    linear weighs its two neighbours (the coordinate clamped at 0), cubic its four with Keys' kernel (a = -0.75),
    indices past the edge reading the edge."""
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        src = (i + 0.5) * n_in / n_out - 0.5
        if not cubic:
            src = max(src, 0.0)
        lo = math.floor(src)
        t = src - lo
        if cubic:
            taps = {-1: t + 1, 0: t, 1: 1 - t, 2: 2 - t}
            for off, d in taps.items():
                near = ((_CUBIC_A + 2) * d - (_CUBIC_A + 3)) * d * d + 1
                far = ((_CUBIC_A * d - 5 * _CUBIC_A) * d + 8 * _CUBIC_A) * d - 4 * _CUBIC_A
                w[i, min(max(lo + off, 0), n_in - 1)] += near if d <= 1 else far
        else:
            w[i, min(lo, n_in - 1)] += 1 - t
            w[i, min(lo + 1, n_in - 1)] += t
    return w


def _resize_reference(m, x):
    """One dense resampling matrix per spatial axis, applied in turn (both modes are separable)."""
    x = x.double()
    cubic = m.mode == "bicubic"
    for axis, n_out in enumerate(m.size):
        w = _resize_weights(x.shape[2 + axis], n_out, cubic)
        x = torch.movedim(torch.tensordot(x, w, dims=([2 + axis], [1])), -1, 2 + axis)
    return x


op("resize", Attr("size", "ints", check=positive, doc="output size per spatial dim"),
   Attr("mode", "str", "linear", choices=("linear", "cubic")),
   shape=_resize_shape, torch=_resize_torch, reference=_resize_reference,
   spatial_dims=(1, 2), min_input_rank=2,
   doc="Resample every spatial dim to a fixed size: (bi)linear, or bicubic in 2-D (Keys a = -0.75), both with "
       "align_corners=False as torch's interpolate; no parameters, no MACs.",
   examples=(({"size": [5, 3], "mode": "cubic"}, [(2, 7, 4)]), ({"size": 9, "mode": "cubic"}, [(3, 4, 6)]),
             ({"size": [4, 7]}, [(2, 6, 3)]), ({"size": 11}, [(3, 5)]), ({"size": 3}, [(2, 8)])))


# --------------------------------------------------------------------------------------------- subpixel
# Sub-pixel convolution (Shi et al. 2016, ESPCN): conv k (same padding) to out * r^2 channels, then
# PixelShuffle(r); in 1-D conv to out * r channels and interleave them along L.


class SubPixel(nn.Module):
    """Conv to out * r^d channels, then a periodic shuffle into an r-times larger grid."""

    def __init__(self, ndim, in_channels, out_channels, r=2, kernel_size=3):
        super().__init__()
        conv = (nn.Conv1d, nn.Conv2d)[ndim - 1]
        self.r = r
        self.conv = conv(in_channels, out_channels * r ** ndim, kernel_size, padding=kernel_size // 2)

    def forward(self, x):
        y = self.conv(x)
        if y.dim() == 4:
            return F.pixel_shuffle(y, self.r)
        n, c, length = y.shape
        return y.reshape(n, c // self.r, self.r, length).transpose(2, 3).reshape(n, c // self.r, length * self.r)


def _subpixel_shape(a, ins):
    need_spatial("subpixel", ins[0], (1, 2))
    return (a.out, *[s * a.r for s in ins[0][1:]])


def _subpixel_reference(m, x):
    """out[:, c, i*r + a, j*r + b] = conv[:, c*r^2 + a*r + b, i, j] (c*r + a in 1-D), by explicit loops."""
    y = conv_reference(m.conv, x.double())
    r, nd = m.r, y.dim() - 2
    cout = y.shape[1] // r ** nd
    out = torch.empty(y.shape[0], cout, *[s * r for s in y.shape[2:]], dtype=torch.float64)
    for c in range(cout):
        for phase in kernel_offsets((r,) * nd):
            channel = c * r ** nd + sum(p * r ** (nd - 1 - d) for d, p in enumerate(phase))
            out[(slice(None), c) + tuple(slice(p, None, r) for p in phase)] = y[:, channel]
    return out


op("subpixel", Attr("out", "int", check=positive), Attr("r", "int", 2, check=positive, doc="upscale factor"),
   Attr("k", "int", 3, check=odd),
   shape=_subpixel_shape,
   params=lambda a, ins: (ins[0][0] * a.k ** (len(ins[0]) - 1) + 1) * a.out * a.r ** (len(ins[0]) - 1),
   macs=lambda a, ins, out: numel(ins[0][1:]) * a.out * a.r ** (len(ins[0]) - 1) * ins[0][0] * a.k ** (len(ins[0]) - 1),
   torch=lambda a, ins: (SubPixel, dict(ndim=(len(ins[0]) - 1), in_channels=ins[0][0], out_channels=a.out, r=a.r,
                                        kernel_size=a.k)),
   reference=_subpixel_reference, spatial_dims=(1, 2), category="block",
   doc="ESPCN sub-pixel convolution: conv k to out*r^2 channels, pixel shuffle r (1-D: out*r, interleave).",
   examples=(({"out": 3}, [(2, 5, 7)]), ({"out": 2, "r": 3, "k": 5}, [(3, 7)]), ({"out": 1, "r": 3}, [(4, 3, 2)])))
