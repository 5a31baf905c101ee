"""B-cos convolution / linear: bcos.

Böhle, Fritz & Schiele, "B-cos Networks: Alignment is All We Need for Interpretability" (CVPR 2022) and B-cos v2
(TPAMI 2024); official code B-cos/B-cos-v2 (``bcos/modules/bcosconv2d.py`` BcosConv2d). B-cosification (Arya
et al. 2024) converts pre-trained layers into this same transform.

For each output unit with weight w (unit norm: w_hat = w / ||w|| over in/groups x kernel) and input patch x:
    out = |cos(x, w)|^(B-1) * (w_hat . x),   cos = (w_hat . x) / ||x||,
with ||x|| = sqrt(sum of squares over the patch + 1e-6) (the official stabiliser) and, for B != 2, |cos| + 1e-6
raised to B - 1 (for B = 2 the official code uses |w_hat . x| / ||x|| directly). ``max_out`` > 1 keeps the largest
of that many linear units before the scaling (MaxOut). No bias: the official layer has none.

The layer is a dynamic linear map: out = W(x) x with W(x) = |cos|^(B-1) w_hat (per output position, the rows of
the winning MaxOut unit). ``dynamic_linear_map(x)`` returns it as a dense matrix per sample: the model's
explanation (contributions W(x) * x). ``explain = True`` detaches the scaling, as the official explanation mode
does, so that input x gradient equals W(x) x.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.references import kernel_offsets
from archdsl.ops.registry import Attr, non_negative, op, positive
from archdsl.ops.shapes import numel, padded_conv_sizes



class BcosConv(nn.Module):
    """B-cos transform over 0-3 spatial dims (0: a B-cos linear layer on (N, C) inputs)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, groups=1, b=2.0, max_out=1):
        super().__init__()
        self.kernel_size, self.stride, self.padding = tuple(kernel_size), tuple(stride), tuple(padding)
        self.groups, self.b, self.max_out, self.out_channels = groups, b, max_out, out_channels
        self.explain = False
        self.weight = nn.Parameter(torch.empty(out_channels * max_out, in_channels // groups, *self.kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def unit_weight(self):
        return self.weight / self.weight.flatten(1).norm(dim=1).reshape(-1, *([1] * (self.weight.dim() - 1)))

    def _linear(self, x):
        conv = (F.conv1d, F.conv2d, F.conv3d)[len(self.kernel_size) - 1]
        return conv(x, self.unit_weight(), None, self.stride, self.padding, 1, self.groups)

    def _patch_norms(self, x):
        g = self.groups
        squares = (x * x).unflatten(1, (g, x.shape[1] // g)).sum(2)  # (N, g, *spatial)
        pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[len(self.kernel_size) - 1]
        mean = pool(squares, self.kernel_size, self.stride, self.padding, count_include_pad=True)
        norms = (mean * math.prod(self.kernel_size) + 1e-6).sqrt()
        return norms.repeat_interleave(self.out_channels // g, dim=1)

    def _select(self, lin):
        """MaxOut: the largest of each output's max_out units; also which one won."""
        units = lin.unflatten(1, (self.out_channels, self.max_out))
        best, index = units.max(dim=2)
        return best, index

    def scaling(self, out, x):
        """|cos|^(B-1) per output element (N, out, *spatial_out), from the linear outputs and the input."""
        norm = self._patch_norms(x)
        if self.b == 2:
            return out.abs() / norm
        return ((out / norm).abs() + 1e-6) ** (self.b - 1)

    def forward(self, x):
        flat = x.dim() == 2
        if flat:
            x = x.unsqueeze(-1)
        out, _ = self._select(self._linear(x))
        if self.b != 1:
            scale = self.scaling(out, x)
            out = (scale.detach() if self.explain else scale) * out
        return out.squeeze(-1) if flat else out

    def dynamic_linear_map(self, x):
        """W(x) with out = W(x) x: (N, out * prod(spatial_out), in * prod(spatial_in)), float64 on a small input."""
        flat = x.dim() == 2
        if flat:
            x = x.unsqueeze(-1)
        n, c, *sizes = x.shape
        basis = torch.eye(c * math.prod(sizes), dtype=x.dtype, device=x.device).reshape(-1, c, *sizes)
        with torch.no_grad():
            rows = self._linear(basis).flatten(2)  # (in*L, units, L_out): column j of every unit's operator
            out, index = self._select(self._linear(x))
            scale = self.scaling(out, x)
        rows = rows.permute(1, 2, 0)  # (units, L_out, in*L)
        units = rows.unflatten(0, (self.out_channels, self.max_out))  # (out, M, L_out, in*L)
        index = index.flatten(2)  # (N, out, L_out)
        positions = torch.arange(units.shape[2], device=x.device)
        chosen = units[torch.arange(self.out_channels)[None, :, None], index, positions]  # (N, out, L_out, in*L)
        if self.b != 1:
            chosen = chosen * scale.flatten(2).unsqueeze(-1)
        return chosen.flatten(1, 2)


def _facts(a, ins):
    c = ins[0][0]
    groups = a.groups
    return c, a.out, groups


def _pads(a):
    return tuple(kk // 2 for kk in a.k) if a.padding is None else a.padding


def _shape(a, ins):
    c, out, g = _facts(a, ins)
    nd = len(ins[0]) - 1
    if c % g or out % g:
        raise ArchError(f"bcos(): groups={g} must divide input channels {c} and output channels {out} "
                        f"(input shape {list(ins[0])})", hint="choose channels divisible by groups")
    if nd == 0:
        if any(k != 1 for k in a.k) or any(s != 1 for s in a.stride) or any(_pads(a)):
            raise ArchError(f"bcos(): on a vector (input shape {list(ins[0])}) it is a B-cos linear layer: "
                            f"k, stride and padding must be 1, 1, 0", hint="write bcos(out) on feature vectors")
        return (out,)
    sizes = padded_conv_sizes("bcos", ins[0], a.k, a.stride, _pads(a))
    return (out, *sizes)


def _params(a, ins):
    c, out, g = _facts(a, ins)
    return out * a.max_out * (c // g) * math.prod(a.k)


def _macs(a, ins, out_shape):
    # The linear part: every MaxOut unit is a conv output (out * max_out channels), (in/groups) * k^d MACs each.
    # The patch norms (a sum of squares and an average pool) are not MACs.
    c, out, g = _facts(a, ins)
    return numel(out_shape) * a.max_out * (c // g) * math.prod(a.k)


def _torch(a, ins):
    c, out, g = _facts(a, ins)
    nd = max(len(ins[0]) - 1, 1)
    k = a.k if len(a.k) == nd else a.k * nd
    return BcosConv, dict(in_channels=c, out_channels=out, kernel_size=tuple(k),
                          stride=tuple(a.stride if len(a.stride) == nd else a.stride * nd),
                          padding=tuple(_pads(a) if len(_pads(a)) == nd else _pads(a) * nd),
                          groups=g, b=a.b, max_out=a.max_out)


def bcos_reference(m, x):
    """B-cos by its formula, output position by output position over explicit kernel offsets, in float64."""
    flat = x.dim() == 2
    x = x.double().unsqueeze(-1) if flat else x.double()
    nd = x.dim() - 2
    k, s = m.kernel_size, m.stride
    xp = F.pad(x, [p for p in reversed(m.padding) for _ in (0, 1)])
    n, c = x.shape[:2]
    g = m.groups
    sizes = [(xp.shape[2 + i] - k[i]) // s[i] + 1 for i in range(nd)]
    taps = []
    for off in kernel_offsets(k):
        sl = tuple(slice(off[i], off[i] + s[i] * (sizes[i] - 1) + 1, s[i]) for i in range(nd))
        taps.append(xp[(slice(None), slice(None), *sl)])
    patches = torch.stack(taps, 2).reshape(n, g, c // g, len(taps), -1)  # (N, g, in/g, K, L_out)
    patches = patches.flatten(2, 3)  # channel-major, tap-minor: the weight's (in/g, *k) order
    w = m.weight.double().flatten(1)
    w = w / torch.sqrt((w * w).sum(1, keepdim=True))
    units = w.shape[0]
    w = w.reshape(g, units // g, -1)
    lin = torch.einsum("gup,ngpl->ngul", w, patches).reshape(n, units, -1)
    best = lin.reshape(n, m.out_channels, m.max_out, -1).amax(2)
    norms = torch.sqrt((patches * patches).sum(2) + 1e-6)  # (N, g, L_out)
    norms = norms.repeat_interleave(m.out_channels // g, 1)
    if m.b == 1:
        y = best
    elif m.b == 2:
        y = best.abs() / norms * best
    else:
        y = ((best / norms).abs() + 1e-6) ** (m.b - 1) * best
    y = y.reshape(n, m.out_channels, *sizes)
    return y.squeeze(-1) if flat else y


op("bcos",
   Attr("out", "int", check=positive, doc="output channels"),
   Attr("k", "ints", 1, check=positive, doc="kernel size (1: a B-cos linear layer)"),
   Attr("b", "float", 2.0, check=lambda v: None if v >= 1 else "must be at least 1", doc="alignment exponent B"),
   Attr("max_out", "int", 1, check=positive, doc="MaxOut units per output"),
   Attr("stride", "ints", 1, check=positive),
   Attr("padding", "ints", None, check=non_negative, doc="default k // 2"),
   Attr("groups", "int", 1, check=positive),
   shape=_shape, params=_params, macs=_macs, torch=_torch, reference=bcos_reference,
   spatial_dims=(0, 1, 2, 3), category="mixer",
   doc="B-cos convolution / linear (Böhle et al. 2022): unit-norm weights, output scaled by |cos(x, w)|^(B-1); "
       "the module's dynamic_linear_map(x) is its explanation.",
   examples=(({"out": 4, "k": 3}, [(3, 7, 6)]), ({"out": 5, "k": 3, "b": 2.5, "max_out": 2}, [(2, 9)]),
             ({"out": 4, "k": [3, 1], "groups": 2, "stride": 2, "b": 1.0}, [(4, 7, 5)]),
             ({"out": 3, "b": 3.0}, [(6,)])))
