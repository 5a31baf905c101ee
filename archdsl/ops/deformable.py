"""Deformable convolution v2: deform.

Zhu et al., "Deformable ConvNets v2: More Deformable, Better Results" (CVPR 2019); the v1 sampling of Dai et al.
2017. A plain conv with the same kernel, stride, padding and dilation predicts, at every output position, an
offset (one per spatial dim) and a modulation scalar (sigmoid) for each kernel tap; the input is sampled at
``position + tap * dilation + offset`` by bilinear interpolation (linear in 1-D), zero outside the input (the
official kernel's boundary rule), multiplied by the modulation, and contracted with the kernel. The offset conv
starts at zero (offsets 0, modulation 0.5), as in DCNv2. Written in torch only (F.grid_sample): no torchvision.

``max_offset`` > 0 is the limited-range variant of "Algorithm-hardware Co-design for Deformable Convolution"
(Huang et al. 2021): offsets are clipped to [-max_offset, max_offset] so every sample stays in a window of known
size around the regular grid (what a line-buffered accelerator can hold). ``offset_groups`` channel groups
each get their own offsets, as DCN's ``deformable_groups``.
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
from archdsl.ops.registry import Attr, op, positive
from archdsl.ops.shapes import conv_shape, need_spatial, numel


class DeformConv(nn.Module):
    """DCNv2 over 1 or 2 spatial dims (weight (out, in/groups, *k), offsets and modulation from `offset`)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups=1,
                 offset_groups=1, modulation=True, max_offset=0.0, bias=True):
        super().__init__()
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.dilation = tuple(padding), tuple(dilation)
        self.groups, self.offset_groups, self.modulation, self.max_offset = groups, offset_groups, modulation, max_offset
        nd, taps = len(self.kernel_size), math.prod(self.kernel_size)
        conv = (nn.Conv1d, nn.Conv2d)[nd - 1]
        self.offset = conv(in_channels, offset_groups * taps * (nd + int(modulation)), self.kernel_size, self.stride,
                           self.padding, self.dilation)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def sampling(self, x):
        """(positions (N, G, K, nd, L_out) in input coordinates, modulation (N, G, K, L_out) or None, out sizes)."""
        nd, taps, g = len(self.kernel_size), math.prod(self.kernel_size), self.offset_groups
        raw = self.offset(x)
        n, out_sizes = raw.shape[0], raw.shape[2:]
        raw = raw.flatten(2)
        offsets = raw[:, : g * taps * nd].reshape(n, g, taps, nd, -1)
        if self.max_offset > 0:
            offsets = offsets.clamp(-self.max_offset, self.max_offset)
        grids = torch.meshgrid(*[torch.arange(s, device=x.device, dtype=x.dtype) for s in out_sizes], indexing="ij")
        tap_grids = torch.meshgrid(*[torch.arange(k, device=x.device, dtype=x.dtype) for k in self.kernel_size],
                                   indexing="ij")
        base = [grids[d].reshape(1, -1) * self.stride[d] - self.padding[d]
                + tap_grids[d].reshape(-1, 1) * self.dilation[d] for d in range(nd)]  # each (K, L_out)
        positions = torch.stack(base, 1) + offsets  # (N, G, K, nd, L_out)
        mask = torch.sigmoid(raw[:, g * taps * nd:].reshape(n, g, taps, -1)) if self.modulation else None
        return positions, mask, tuple(out_sizes)

    def forward(self, x):
        n, c, *sizes = x.shape
        nd, g = len(sizes), self.offset_groups
        positions, mask, out_sizes = self.sampling(x)
        taps, length = positions.shape[2], positions.shape[-1]
        # Bilinear sampling by grid_sample (zeros outside, differentiable in the positions) on the input padded
        # by one zero all round: a size-1 dim then still has two grid points to normalise by, and the zero
        # border is what lies outside. A 1-D input is a 2-D one of height 1 sampled on its middle row.
        planes = x.reshape(n * g, c // g, *([1] if nd == 1 else []), *sizes)
        planes = F.pad(planes, (1, 1, 1, 1))
        rows, cols_ = planes.shape[-2:]
        py = positions[:, :, :, 0] + 1 if nd == 2 else torch.ones_like(positions[:, :, :, 0])
        px = positions[:, :, :, -1] + 1
        grid = torch.stack([px * (2 / (cols_ - 1)) - 1, py * (2 / (rows - 1)) - 1], -1)
        cols = F.grid_sample(planes, grid.reshape(n * g, taps, length, 2), mode="bilinear", padding_mode="zeros",
                             align_corners=True).reshape(n, g, c // g, taps * length)
        if mask is not None:
            cols = cols * mask.reshape(n, g, 1, -1)
        gw = self.groups
        cols = cols.reshape(n, gw, (c // gw) * taps, length)  # channel-major, tap-minor: the weight's order
        y = torch.matmul(self.weight.reshape(gw, -1, (c // gw) * taps), cols).reshape(n, -1, *out_sizes)
        if self.bias is not None:
            y = y + self.bias.reshape(-1, *([1] * nd))
        return y


def _facts(a, ins):
    return ins[0][0], a.out, a.groups


def _pads(a):
    return tuple(d * (k - 1) // 2 for k, d in zip(a.k, a.dilation)) if a.padding is None else a.padding


def _shape(a, ins):
    need_spatial("deform", ins[0], dims=(1, 2))
    c, out, g = _facts(a, ins)
    if c % g or out % g or c % a.offset_groups:
        raise ArchError(f"deform(): groups={g} must divide input channels {c} and output channels {out}, and "
                        f"offset_groups={a.offset_groups} the input channels (input shape {list(ins[0])})",
                        hint="choose channel counts divisible by groups and offset_groups")
    return conv_shape("deform", ins[0], out, a.k, a.stride, _pads(a), a.dilation)


def _offset_channels(a, ins):
    nd = len(ins[0]) - 1
    return a.offset_groups * math.prod(a.k) * (nd + int(a.modulation))


def _params(a, ins):
    c, out, g = _facts(a, ins)
    taps = math.prod(a.k)
    oc = _offset_channels(a, ins)
    return out * (c // g) * taps + (out if a.bias else 0) + oc * c * taps + oc


def _macs(a, ins, out_shape):
    # The deformable conv: (in/groups) * K MACs per output element; the offset conv: in * K per offset channel
    # and output position. Bilinear sampling (2^d products per sample) and modulation are not MACs.
    c, out, g = _facts(a, ins)
    taps, positions = math.prod(a.k), numel(out_shape[1:])
    return numel(out_shape) * (c // g) * taps + positions * _offset_channels(a, ins) * c * taps


def _torch(a, ins):
    c, out, g = _facts(a, ins)
    return DeformConv, dict(in_channels=c, out_channels=out, kernel_size=tuple(a.k), stride=tuple(a.stride),
                            padding=tuple(_pads(a)), dilation=tuple(a.dilation), groups=g,
                            offset_groups=a.offset_groups, modulation=a.modulation, max_offset=a.max_offset,
                            bias=a.bias)


def _sample(image, point):
    """Bilinear (1-D: linear) value of image (C, *sizes) at a real point, zero outside, by its corners."""
    value = torch.zeros(image.shape[0], dtype=torch.float64)
    lows = [math.floor(p) for p in point]
    for corner in itertools.product((0, 1), repeat=len(point)):
        idx = [lo + s for lo, s in zip(lows, corner)]
        if all(0 <= i < size for i, size in zip(idx, image.shape[1:])):
            share = math.prod(1 - abs(p - i) for p, i in zip(point, idx))
            value += share * image[(slice(None), *idx)]
    return value


def deform_reference(m, x):
    """DCNv2 output by explicit loops over samples, output positions and taps (float64); offsets from the
    offset conv computed by the conv reference."""
    x = x.double()
    n, c, *sizes = x.shape
    nd, g, gw = len(sizes), m.offset_groups, m.groups
    raw = conv_reference(m.offset, x)
    out_sizes = raw.shape[2:]
    taps = list(kernel_offsets(m.kernel_size))
    w = m.weight.double()
    o = w.shape[0]
    y = torch.zeros(n, o, *out_sizes, dtype=torch.float64)
    for b in range(n):
        for pos in kernel_offsets(tuple(out_sizes)):
            cols = torch.zeros(c, len(taps), dtype=torch.float64)
            for grp in range(g):
                chans = slice(grp * c // g, (grp + 1) * c // g)
                for t, tap in enumerate(taps):
                    point = []
                    for d in range(nd):
                        off = raw[(b, (grp * len(taps) + t) * nd + d, *pos)].item()
                        if m.max_offset > 0:
                            off = min(max(off, -m.max_offset), m.max_offset)
                        point.append(pos[d] * m.stride[d] - m.padding[d] + tap[d] * m.dilation[d] + off)
                    v = _sample(x[b, chans], point)
                    if m.modulation:
                        z = raw[(b, g * len(taps) * nd + grp * len(taps) + t, *pos)].item()
                        v = v / (1 + math.exp(-z))
                    cols[chans, t] = v
            for oc in range(o):
                grp = oc // (o // gw)
                block = cols[grp * c // gw:(grp + 1) * c // gw]
                y[(b, oc, *pos)] = (w[oc].reshape(c // gw, -1) * block).sum()
    if m.bias is not None:
        y = y + m.bias.double().reshape(-1, *([1] * nd))
    return y


op("deform",
   Attr("out", "int", check=positive, doc="output channels"),
   Attr("k", "ints", 3, check=positive, doc="kernel size"),
   Attr("stride", "ints", 1, check=positive),
   Attr("padding", "ints", None, doc="default dilation * (k - 1) // 2"),
   Attr("dilation", "ints", 1, check=positive),
   Attr("groups", "int", 1, check=positive),
   Attr("offset_groups", "int", 1, check=positive, doc="channel groups with their own offsets"),
   Attr("modulation", "bool", True, doc="DCNv2's per-tap modulation (false: DCNv1)"),
   Attr("max_offset", "float", 0.0, check=lambda v: None if v >= 0 else "must be zero or more",
        doc="limited-range offsets: clip to [-max_offset, max_offset]; 0 = unrestricted"),
   Attr("bias", "bool", True),
   shape=_shape, params=_params, macs=_macs, torch=_torch, reference=deform_reference,
   spatial_dims=(1, 2), category="mixer", precisions=("fp32", "bf16", "fp16"),
   doc="Deformable convolution v2 (Zhu et al. 2019): per-position offsets and modulation from a conv, bilinear "
       "sampling in torch; max_offset clips the offsets (limited-range, Huang et al. 2021).",
   examples=(({"out": 4, "k": 3}, [(3, 7, 6)]), ({"out": 4, "k": 3, "stride": 2, "max_offset": 1.0}, [(2, 9, 8)]),
             ({"out": 4, "k": 3, "groups": 2, "offset_groups": 2, "modulation": False}, [(4, 5, 6)]),
             ({"out": 3, "k": 5, "dilation": 2}, [(2, 13)]), ({"out": 2, "k": 3, "max_offset": 0.5}, [(3, 11)])))
