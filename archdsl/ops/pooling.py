"""Pooling: avgpool, maxpool (1-3 spatial dims) and the global pools gap, gmp (-> (C,)).

Pools count 0 MACs. The references slide the window with explicit strided slices (one per kernel offset)
or loop over positions in float64, independently of torch's pooling kernels.
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.registry import Attr, non_negative, op, positive
from archdsl.ops.shapes import conv_shape, need_spatial

_AVG = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
_MAX = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}


class GlobalAvgPool(nn.Module):
    """Mean over all spatial positions: (N, C, ...) -> (N, C)."""

    def forward(self, x):
        return x.flatten(2).mean(-1)


class GlobalMaxPool(nn.Module):
    """Max over all spatial positions: (N, C, ...) -> (N, C)."""

    def forward(self, x):
        return x.flatten(2).amax(-1)


def _geometry(a):
    """(kernel, stride, padding) tuples; the stride defaults to the kernel (non-overlapping windows)."""
    return a.k, a.stride if a.stride is not None else a.k, a.padding


def _pool_shape(name):
    def rule(a, ins):
        need_spatial(name, ins[0])
        k, stride, pad = _geometry(a)
        for kk, p in zip(k, pad):
            if 2 * p > kk:  # torch refuses this: a window could then hold padding only
                raise ArchError(f"{name}(): padding {p} is more than half the kernel {kk} "
                                f"(input shape {list(ins[0])})", hint="use padding <= k // 2")
        shape = conv_shape(name, ins[0], ins[0][0], k, stride, pad, (1,) * len(k))
        if not a.get("ceil_mode"):
            return shape
        return (shape[0], *(_ceil_size(s, kk, st, p) for s, kk, st, p in zip(ins[0][1:], k, stride, pad)))

    return rule


def _ceil_size(size, k, stride, pad):
    """Windows when the last one may run past the end (torch's ceil_mode): one more than floor mode when the
    stride leaves input behind, but never a window that starts in the right padding."""
    out = -(-(size + 2 * pad - k) // stride) + 1
    return out - 1 if (out - 1) * stride >= size + pad else out


def _pool_torch(classes, extra=()):
    def build(a, ins):
        k, stride, pad = _geometry(a)
        kwargs = dict(kernel_size=k, stride=stride, padding=pad)
        kwargs.update({name: a[name] for name in extra})
        return classes[len(ins[0]) - 1], kwargs

    return build


def _tup(v, n):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _windows(x, k, stride, pad, fill, out=None):
    """The input under each kernel offset: one strided slice per offset, each shaped like the output (`out`
    sizes, default: the windows that fit in the padded input)."""
    nd = len(k)
    x = F.pad(x, [p for p in reversed(pad) for _ in (0, 1)], value=fill)
    if out is None:
        out = [(x.shape[2 + i] - k[i]) // stride[i] + 1 for i in range(nd)]
    else:  # windows running past the end read `fill` there
        x = F.pad(x, [e for i in reversed(range(nd))
                      for e in (0, max(0, (out[i] - 1) * stride[i] + k[i] - x.shape[2 + i]))], value=fill)
    for offset in itertools.product(*(range(kk) for kk in k)):
        sl = tuple(slice(offset[i], offset[i] + stride[i] * (out[i] - 1) + 1, stride[i]) for i in range(nd))
        yield x[(slice(None), slice(None)) + sl]


def _module_geometry(m, x):
    nd = x.dim() - 2
    return _tup(m.kernel_size, nd), _tup(m.stride, nd), _tup(m.padding, nd)


def _avg_reference(m, x):
    x = x.double()
    k, s, p = _module_geometry(m, x)
    out = [_ceil_size(n, *g) for n, g in zip(x.shape[2:], zip(k, s, p))] if m.ceil_mode else None
    total = sum(_windows(x, k, s, p, 0.0, out))
    if m.count_include_pad and not m.ceil_mode:
        return total / math.prod(k)
    # the divisor counts the real elements, and the padding too when count_include_pad, never the part of a
    # ceil-mode window past the padded end
    ones = torch.ones_like(x)
    if m.count_include_pad:
        ones = F.pad(ones, [q for q in reversed(p) for _ in (0, 1)], value=1.0)
        p = (0,) * len(k)
    return total / sum(_windows(ones, k, s, p, 0.0, out))


def _max_reference(m, x):
    x = x.double()
    k, s, p = _module_geometry(m, x)
    out = None
    for w in _windows(x, k, s, p, float("-inf")):
        out = w if out is None else torch.maximum(out, w)
    return out


def _pool_attrs():
    return (Attr("k", "ints", check=positive, doc="kernel size"),
            Attr("stride", "ints", None, check=positive, doc="default: the kernel size"),
            Attr("padding", "ints", 0, check=non_negative))


op("avgpool", *_pool_attrs(),
   Attr("count_include_pad", "bool", True, doc="false: average only the real elements (PoolFormer)"),
   Attr("ceil_mode", "bool", False, doc="true: a last, partial window where the stride leaves input behind "
                                         "(with padding 0 and count_include_pad false: TF 'same' pooling)"),
   shape=_pool_shape("avgpool"), torch=_pool_torch(_AVG, ("count_include_pad", "ceil_mode")),
   reference=_avg_reference,
   spatial_dims=(1, 2, 3), min_input_rank=2, half_spatial_dims=(1, 2),  # no bf16/fp16 avg_pool3d on CPU
   doc="Average pooling over 1-3 spatial dims.",
   examples=(({"k": 3}, [(3, 10, 9)]),
             ({"k": 3, "stride": 2, "padding": 1, "count_include_pad": False}, [(2, 11)]),
             ({"k": 3, "stride": 1, "padding": 1, "count_include_pad": False}, [(3, 5, 7)]),
             ({"k": [3, 2], "stride": [2, 1], "padding": [1, 0]}, [(2, 7, 6)]),
             ({"k": 2}, [(2, 4, 5, 3)]),
             ({"k": 2, "ceil_mode": True, "count_include_pad": False}, [(2, 7, 6)]),
             ({"k": 3, "stride": 2, "padding": 1, "ceil_mode": True}, [(2, 8)]),
             ({"k": [2, 3], "stride": [2, 2], "ceil_mode": True, "count_include_pad": False}, [(3, 5, 4)])))

op("maxpool", *_pool_attrs(),
   shape=_pool_shape("maxpool"), torch=_pool_torch(_MAX), reference=_max_reference,
   spatial_dims=(1, 2, 3), min_input_rank=2,
   doc="Max pooling over 1-3 spatial dims.", exact_in_any_dtype=True,
   examples=(({"k": 3, "stride": 2, "padding": 1}, [(3, 9, 8)]), ({"k": 2}, [(2, 7)]),
             ({"k": [2, 3]}, [(2, 5, 7)])))


def _global_shape(name):
    def rule(a, ins):
        need_spatial(name, ins[0])
        return (ins[0][0],)

    return rule


def _positions(x):
    return itertools.product(*(range(s) for s in x.shape[2:]))


def _gap_reference(m, x):
    x = x.double()
    total = torch.zeros(x.shape[:2], dtype=torch.float64)
    count = 0
    for pos in _positions(x):
        total = total + x[(slice(None), slice(None)) + pos]
        count += 1
    return total / count


def _gmp_reference(m, x):
    x = x.double()
    out = torch.full(x.shape[:2], float("-inf"), dtype=torch.float64)
    for pos in _positions(x):
        out = torch.maximum(out, x[(slice(None), slice(None)) + pos])
    return out


_GLOBAL_EXAMPLES = (({}, [(3, 5, 7)]), ({}, [(4, 9)]), ({}, [(2, 3, 4, 5)]))

op("gap", shape=_global_shape("gap"), torch=lambda a, ins: (GlobalAvgPool, {}), reference=_gap_reference,
   spatial_dims=(1, 2, 3), min_input_rank=2, examples=_GLOBAL_EXAMPLES,
   doc="Global average pool over all positions: (C, ...) -> (C,).")

op("gmp", shape=_global_shape("gmp"), torch=lambda a, ins: (GlobalMaxPool, {}), reference=_gmp_reference,
   spatial_dims=(1, 2, 3), min_input_rank=2, examples=_GLOBAL_EXAMPLES,
   doc="Global max pool over all positions: (C, ...) -> (C,).", exact_in_any_dtype=True)
