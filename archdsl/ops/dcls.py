"""Dilated convolution with learnable spacings (DCLS): dcls.

Khalfaoui-Hassani et al., "Dilated convolution with learnable spacings" (ICLR 2023) and the DCLS thesis
(Gaussian interpolation). Official code: K-H-Ismail/Dilated-Convolution-with-Learnable-Spacings-PyTorch
(``DCLS/construct/modules.py``); the facts below (initialisation, sigma offset, clamping range) follow it.

Each (out, in/groups) kernel holds ``count`` weights W at learnable real positions P inside a dilated
kernel of size ``k``. The forward pass scatters every weight onto the dense grid (bilinear: onto its 2^d
integer neighbours with weights prod(1 - |i - p|); gauss: onto all cells with a normalised Gaussian of
learnable per-dim spread sigma = |SIG| + 0.27), sums the elements, and runs an ordinary F.convNd.

Sharing: the IR may tie ``P`` across blocks (DCLS shares positions within a ConvNeXt stage); the module
lists it in ``_shareable`` and carries the group name in ``share``. ``dcls_shareable_params(a, ins)``
says how many of the op's parameters that tie covers.
"""
from __future__ import annotations

import itertools
import math
import types

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.conv import conv_reference
from archdsl.ops.registry import Attr, Fold, op, positive
from archdsl.ops.shapes import conv_out, half_kernel, need_spatial, numel, resolve_padding

SIGMA_OFFSET = 0.27  # official: sigma = |SIG| + 0.27, SIG initialised to 0.23 -> every element starts at 0.5


class DclsConv(nn.Module):
    """DCLS convolution over 1-3 spatial dims (dense kernel built from weights + learnable positions)."""

    _shareable = ("P",)

    def __init__(self, in_channels, out_channels, count, kernel_size, stride=1, padding=0, groups=1,
                 bias=True, interp="bilinear", pad=None, share=""):
        super().__init__()
        self.kernel_size = tuple(kernel_size)
        nd = len(self.kernel_size)
        self.ndim = nd
        self.in_channels, self.out_channels, self.count, self.groups = in_channels, out_channels, count, groups
        self.stride = tuple(stride) if isinstance(stride, (list, tuple)) else (stride,) * nd
        self.padding = tuple(padding) if isinstance(padding, (list, tuple)) else (padding,) * nd
        self.pad = tuple(pad) if pad else None  # F.pad amounts when the padding is asymmetric
        self.interp = interp
        self.share = share  # name of the group whose blocks tie P (empty: not shared)
        cg = in_channels // groups
        self.weight = nn.Parameter(torch.empty(out_channels, cg, count))
        self.P = nn.Parameter(torch.empty(nd, out_channels, cg, count))
        if interp == "gauss":
            self.SIG = nn.Parameter(torch.empty(nd, out_channels, cg, count))
        else:
            self.register_parameter("SIG", None)
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        # Official DCLS init: W as nn.ConvNd (kaiming_uniform a=sqrt(5), fan_in = in/groups * count), bias
        # U(+-1/sqrt(fan_in)), positions N(0, 0.5) around the kernel centre clamped to the kernel extent,
        # SIG = 0.23 (sigma 0.5).
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight.shape[1] * self.count)
            nn.init.uniform_(self.bias, -bound, bound)
        with torch.no_grad():
            for d, k in enumerate(self.kernel_size):
                self.P[d].normal_(0.0, 0.5).clamp_(-(k // 2), k - 1 - k // 2)
            if self.SIG is not None:
                self.SIG.fill_(0.23)

    def clamp_parameters(self):
        """Clamp P in place to the kernel extent. The official training loop calls this after each step; here
        every training-mode forward calls it first, so any training loop (ours, or a user's around the emitted
        module) keeps the positions inside the kernel."""
        with torch.no_grad():
            for d, k in enumerate(self.kernel_size):
                self.P[d].clamp_(-(k // 2), k - 1 - k // 2)

    def kernel(self):
        """The dense kernel (out, in/groups, *kernel_size); differentiable wrt weight, P and SIG."""
        nd = self.ndim
        o, cg, n = self.weight.shape
        kern = self.weight.reshape(o, cg, n, *([1] * nd))
        for d, k in enumerate(self.kernel_size):
            c = k // 2
            # Positions are offsets from the centre, clamped to the extent so index c + p is in [0, k-1]. The
            # gradient passes straight through the clamp: a position on the border must still be able to move
            # back inside (torch's clamp gives no gradient at the bound itself since 2.14, which froze them).
            p = self.P[d]
            pos = p + (p.clamp(-c, k - 1 - c) - p).detach() + c
            diff = torch.arange(k, dtype=pos.dtype, device=pos.device) - pos.unsqueeze(-1)  # (o, cg, n, k)
            if self.SIG is not None:
                sig = self.SIG[d].abs().unsqueeze(-1) + 0.27
                h = torch.exp(-0.5 * (diff / sig) ** 2)
                # exp(-|(i - p) / sigma|^2 / 2) is a product over dims, so normalising each dim's factor
                # equals the official normalisation over the whole kernel (minus its 1e-7 guard).
                h = h / h.sum(-1, keepdim=True)
            else:  # bilinear: 1 - frac on cell fl, frac on fl + 1
                # fl = floor(pos) but at most k - 2, so a position on the upper border (pos = k - 1: fl = k - 2,
                # frac = 1) has its inward derivative; |i - pos| had none at any integer position.
                fl = pos.detach().floor().clamp(0, max(k - 2, 0)).unsqueeze(-1)
                frac = pos.unsqueeze(-1) - fl
                cells = diff + pos.unsqueeze(-1)
                h = (1 - frac) * (cells == fl) + frac * (cells == fl + 1)
            view = [o, cg, n] + [1] * nd
            view[3 + d] = k
            # Elementwise products only (no matmul), so a flop counter sees just the conv below.
            kern = kern * h.reshape(view)
        return kern.sum(2)

    def forward(self, x):
        if self.training and torch.is_grad_enabled():
            self.clamp_parameters()  # the official per-step clamp, after the previous step's update
        if self.pad is not None:
            x = F.pad(x, self.pad)
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.ndim - 1]
        return conv(x, self.kernel(), self.bias, self.stride, self.padding, 1, self.groups)


def _facts(a, ins):
    """(in_ch, out_ch, groups): out=None -> depthwise (groups=C); else groups defaults to 1."""
    c = ins[0][0]
    out = a.out if a.out is not None else c
    groups = a.groups if a.groups is not None else (c if a.out is None else 1)
    return c, out, groups


def _pads(a, ins):
    if a.padding is None:  # official default padding: dilated_kernel_size // 2 (same size for odd k)
        return tuple((p, p) for p in half_kernel(a.k))
    return resolve_padding("dcls", a.padding, a.k, a.stride, (1,) * len(a.k))


def dcls_shape(a, ins):
    need_spatial("dcls", ins[0])
    c, out, groups = _facts(a, ins)
    if c % groups or out % groups:
        raise ArchError(
            f"dcls(): groups={groups} must divide both input channels {c} and output channels {out} "
            f"(input shape {list(ins[0])}, output shape {[out, *ins[0][1:]]})",
            hint="choose channels divisible by groups, or leave out=None for a depthwise DCLS conv")
    sizes = [conv_out(s, k, st, lo, hi, 1) for s, k, st, (lo, hi) in zip(ins[0][1:], a.k, a.stride, _pads(a, ins))]
    if min(sizes) < 1:
        raise ArchError(f"dcls(): dilated kernel {list(a.k)} is larger than its padded input "
                        f"(input shape {list(ins[0])}, output shape {[out, *sizes]})",
                        hint="use a smaller k, more padding, or downsample less before this op")
    return (out, *sizes)


def dcls_params(a, ins):
    # W (out, in/g, count) + P (ndim, out, in/g, count) [+ SIG (ndim, out, in/g, count) for gauss] + bias.
    c, out, groups = _facts(a, ins)
    nd = len(a.k)
    elems = out * (c // groups) * a.count
    return elems * (1 + nd + (nd if a.interp == "gauss" else 0)) + (out if a.bias else 0)


def dcls_shareable_params(a, ins) -> int:
    """How many of dcls's parameters the IR may tie across blocks (the positions P)."""
    c, out, groups = _facts(a, ins)
    return len(a.k) * out * (c // groups) * a.count


def dcls_macs(a, ins, out_shape):
    # DCLS papers' convention: the dense dilated conv actually executed, k^d MACs per output element and
    # input channel of its group (out_numel * in/groups * prod(k)). Building the dense kernel (count * k^d
    # elementwise products per (out, in/g) pair, independent of the input size) is not counted.
    c, out, groups = _facts(a, ins)
    return numel(out_shape) * (c // groups) * math.prod(a.k)


def dcls_torch(a, ins):
    c, out, groups = _facts(a, ins)
    pads = _pads(a, ins)
    symmetric = all(lo == hi for lo, hi in pads)
    return DclsConv, dict(
        in_channels=c, out_channels=out, count=a.count, kernel_size=tuple(a.k), stride=tuple(a.stride),
        padding=tuple(lo for lo, _ in pads) if symmetric else (0,) * len(a.k),
        groups=groups, bias=a.bias, interp=a.interp,
        pad=None if symmetric else tuple(p for lo_hi in reversed(pads) for p in lo_hi), share=a.share)


def dcls_dense_kernel_reference(m) -> torch.Tensor:
    """The dense kernel built element by element in float64 (explicit neighbours / explicit Gaussian)."""
    ks = m.kernel_size
    nd = len(ks)
    w, p = m.weight.detach().double(), m.P.detach().double()
    sig = m.SIG.detach().double() if m.SIG is not None else None
    o, cg, n = w.shape
    dense = torch.zeros(o, cg, *ks, dtype=torch.float64)
    cells = list(itertools.product(*[range(k) for k in ks]))
    for oi, ci, e in itertools.product(range(o), range(cg), range(n)):
        pos = []
        for d, k in enumerate(ks):
            c = k // 2
            pos.append(min(max(p[d, oi, ci, e].item(), -c), k - 1 - c) + c)
        weight = w[oi, ci, e].item()
        if sig is None:
            base = [math.floor(q) for q in pos]
            frac = [q - b for q, b in zip(pos, base)]
            for corner in itertools.product((0, 1), repeat=nd):
                idx = [b + s for b, s in zip(base, corner)]
                if any(i < 0 or i >= k for i, k in zip(idx, ks)):
                    continue  # only reachable with a zero share (a position on the last cell)
                share = math.prod(f if s else 1 - f for f, s in zip(frac, corner))
                dense[(oi, ci, *idx)] += weight * share
        else:
            sd = [abs(sig[d, oi, ci, e].item()) + SIGMA_OFFSET for d in range(nd)]
            g = {cell: math.exp(-0.5 * sum(((cell[d] - pos[d]) / sd[d]) ** 2 for d in range(nd))) for cell in cells}
            total = sum(g.values())
            for cell, v in g.items():
                dense[(oi, ci, *cell)] += weight * v / total
    return dense


def dcls_reference(m, x):
    if m.pad is not None:
        x = F.pad(x.double(), m.pad)
    dense = dcls_dense_kernel_reference(m)
    conv = types.SimpleNamespace(weight=dense, bias=m.bias, padding=m.padding, groups=m.groups,
                                 kernel_size=m.kernel_size, stride=m.stride, dilation=(1,) * m.ndim)
    return conv_reference(conv, x)


def _dcls_as_conv(a, ins):
    # the dense kernel its positions interpolate to, dilation 1; the default padding k//2 (also for even k)
    # is written out, since conv's default differs for even k
    _, out, groups = _facts(a, ins)
    padding = a.padding if a.padding is not None else half_kernel(a.k)
    return dict(out=out, k=a.k, stride=a.stride, padding=padding, dilation=1, groups=groups, bias=a.bias)


DCLS = op(
    "dcls",
    Attr("k", "ints", check=positive, doc="dilated kernel size (the extent positions may move in)"),
    Attr("count", "int", check=positive, doc="learnable elements per (out, in/groups) kernel"),
    Attr("out", "int", None, check=positive, doc="output channels; None = depthwise (out = groups = C)"),
    Attr("groups", "int", None, check=positive, doc="default: C when out is None, else 1"),
    Attr("interp", "str", "bilinear", choices=("bilinear", "gauss"),
         doc="bilinear (DCLS paper) or gauss (thesis: learnable per-element, per-dim sigma)"),
    Attr("bias", "bool", True),
    Attr("padding", "any", None, doc="default k//2 per dim (same size for odd k)"),
    Attr("stride", "ints", 1, check=positive),
    Attr("share", "str", "", doc="group name: blocks with the same name tie their positions P"),
    shape=dcls_shape, params=dcls_params, macs=dcls_macs, torch=dcls_torch, reference=dcls_reference,
    shared_params=dcls_shareable_params, category="mixer", spatial_dims=(1, 2, 3),
    fold=Fold("fold_kernels", _dcls_as_conv, lambda m: (m.kernel(), m.bias)),
    doc="Dilated convolution with learnable spacings: count weights per kernel at learnable positions in a "
        "k-sized dilated kernel, interpolated onto the grid (bilinear or Gaussian), then a dense conv.",
    examples=(({"k": 5, "count": 3}, [(3, 9, 7)]),
              ({"k": [5, 3], "count": 3, "out": 4, "interp": "gauss"}, [(3, 7, 6)]),
              ({"k": 7, "count": 4, "interp": "gauss", "bias": False}, [(2, 11)]),
              ({"k": 4, "count": 2, "out": 4, "groups": 2, "stride": 2}, [(2, 13)]),
              ({"k": [3, 5, 3], "count": 2}, [(2, 5, 6, 4)])),
)
