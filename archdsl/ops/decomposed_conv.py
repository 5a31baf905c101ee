"""A-priori compressed convolution: tdconv, a conv whose kernel is a low-rank tensor decomposition from the start.

"A priori compression of convolutional neural networks for wave simulators" (the seed paper) replaces the
(out, in, k, k) kernel before training by one-way filters: the CP format
    W[o, c, i, j] = sum_r U[o, r] * A1[r, i] * A2[r, j] * V[r, c],
run as a 1x1 conv (in -> rank), one depthwise 1-D conv per spatial dim (rank channels, k taps along that dim)
and a 1x1 conv (rank -> out, with the bias); the CP-decomposed conv of Lebedev et al. (ICLR 2015). ``form =
"tucker"`` is the Tucker-2 format of Kim et al. (ICLR 2016): 1x1 (in -> rank), a dense k^d core (rank -> rank),
1x1 (rank -> out). The first 1x1 has no bias, so the zero padding of the middle convs equals the zero padding of
the dense kernel: the layer is exactly the conv with the composed kernel. ``rank`` is the searchable size.
"""
from __future__ import annotations

import math
import types

import torch
from torch import nn

from archdsl.ops.conv import conv_reference
from archdsl.ops.references import kernel_offsets
from archdsl.ops.registry import Attr, op, positive
from archdsl.ops.shapes import conv_out, need_spatial, numel, padded_conv_sizes


class DecomposedConv(nn.Module):
    """1x1 (in -> rank) >> CP: one depthwise 1-D conv per dim | Tucker: a k^d core >> 1x1 (rank -> out, bias)."""

    def __init__(self, in_channels, out_channels, rank, kernel_size, stride, padding, form="cp", bias=True):
        super().__init__()
        nd = len(kernel_size)
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[nd - 1]
        ones = (1,) * nd
        self.form = form
        self.first = conv(in_channels, rank, ones, bias=False)
        if form == "cp":
            mids = []
            for d in range(nd):  # dim d: k taps along d, 1 along the others
                k, s, p = list(ones), list(ones), [0] * nd
                k[d], s[d], p[d] = kernel_size[d], stride[d], padding[d]
                mids.append(conv(rank, rank, tuple(k), tuple(s), tuple(p), groups=rank, bias=False))
            self.mid = nn.ModuleList(mids)
        else:
            self.mid = nn.ModuleList([conv(rank, rank, tuple(kernel_size), tuple(stride), tuple(padding), bias=False)])
        self.last = conv(rank, out_channels, ones, bias=bias)

    def forward(self, x):
        x = self.first(x)
        for m in self.mid:
            x = m(x)
        return self.last(x)


def _pads(a):
    return tuple(k // 2 for k in a.k) if a.padding is None else a.padding


def _shape(a, ins):
    need_spatial("tdconv", ins[0])
    sizes = padded_conv_sizes("tdconv", ins[0], a.k, a.stride, _pads(a))
    return (a.out, *sizes)


def _params(a, ins):
    c, r = ins[0][0], a.rank
    core = r * sum(a.k) if a.form == "cp" else r * r * math.prod(a.k)
    return c * r + core + r * a.out + (a.out if a.bias else 0)


def _macs(a, ins, out_shape):
    # 1x1 in -> rank at the input's resolution; the middle convs at theirs; 1x1 rank -> out at the output's.
    c, r = ins[0][0], a.rank
    first = numel(ins[0][1:]) * r * c
    if a.form == "cp":
        size, mid = list(ins[0][1:]), 0
        for d, (k, s, p) in enumerate(zip(a.k, a.stride, _pads(a))):
            size[d] = conv_out(size[d], k, s, p, p, 1)  # each 1-D conv shrinks its own dim
            mid += numel(size) * r * k
    else:
        mid = numel(out_shape[1:]) * r * r * math.prod(a.k)
    return first + mid + numel(out_shape[1:]) * a.out * r


def _torch(a, ins):
    return DecomposedConv, dict(in_channels=ins[0][0], out_channels=a.out, rank=a.rank, kernel_size=tuple(a.k),
                                stride=tuple(a.stride), padding=tuple(_pads(a)), form=a.form, bias=a.bias)


def dense_kernel(m) -> torch.Tensor:
    """The composed (out, in, *k) kernel, tap by tap in float64: U diag(core at the tap) V (CP) or U G V."""
    v = m.first.weight.double().flatten(1)  # (rank, in)
    u = m.last.weight.double().flatten(1)  # (out, rank)
    if m.form == "cp":
        factors = [conv.weight.double().flatten(1) for conv in m.mid]  # per dim (rank, k_d)
        ks = tuple(f.shape[1] for f in factors)
    else:
        core = m.mid[0].weight.double()  # (rank, rank, *k)
        ks = tuple(core.shape[2:])
    w = torch.zeros(u.shape[0], v.shape[1], *ks, dtype=torch.float64)
    for tap in kernel_offsets(ks):
        if m.form == "cp":
            g = torch.diag(math.prod(f[:, t] for f, t in zip(factors, tap)))
        else:
            g = core[(slice(None), slice(None), *tap)]
        w[(slice(None), slice(None), *tap)] = u @ g @ v
    return w


def tdconv_reference(m, x):
    nd = x.dim() - 2
    mids = m.mid
    stride = tuple(mids[d].stride[d] for d in range(nd)) if m.form == "cp" else mids[0].stride
    padding = tuple(mids[d].padding[d] for d in range(nd)) if m.form == "cp" else mids[0].padding
    w = dense_kernel(m)
    conv = types.SimpleNamespace(weight=w, bias=m.last.bias, padding=padding, groups=1, kernel_size=w.shape[2:],
                                 stride=stride, dilation=(1,) * nd)
    return conv_reference(conv, x)


op("tdconv",
   Attr("out", "int", check=positive, doc="output channels"),
   Attr("k", "ints", 3, check=positive, doc="kernel size"),
   Attr("rank", "int", 4, check=positive, doc="decomposition rank (the searchable compression)"),
   Attr("form", "str", "cp", choices=("cp", "tucker"), doc="cp: one-way filters (the paper); tucker: Tucker-2"),
   Attr("stride", "ints", 1, check=positive),
   Attr("padding", "ints", None, doc="default k // 2"),
   Attr("bias", "bool", True),
   shape=_shape, params=_params, macs=_macs, torch=_torch, reference=tdconv_reference, category="mixer",
   doc="A-priori compressed conv: a CP (one-way filters) or Tucker-2 decomposed kernel of the given rank, run as "
       "1x1 >> 1-D depthwise per dim (or a rank x rank core) >> 1x1.",
   examples=(({"out": 5, "k": 3, "rank": 2}, [(3, 7, 6)]), ({"out": 4, "k": [5, 3], "rank": 3, "stride": 2},
                                                            [(2, 9, 8)]),
             ({"out": 4, "k": 3, "rank": 2, "form": "tucker", "bias": False}, [(3, 6, 7)]),
             ({"out": 3, "k": 5, "rank": 3, "stride": 2}, [(2, 13)]),
             ({"out": 2, "k": 3, "rank": 2, "form": "tucker"}, [(4, 10)])))
