"""Adaptive Rotated Convolution: arconv.

Pu et al., "Adaptive Rotated Convolution for Rotated Object Detection" (ICCV 2023); official code
LeapLabTHU/ARC (``routing_function.py``, ``adaptive_rotated_conv.py``). A routing branch reads the input,
    depthwise 3x3 conv (no bias) >> LayerNorm over channels >> ReLU >> global average pool,
and predicts per sample n combination weights alpha = sigmoid(fc_alpha(.)) and n angles
theta = softsign(fc_theta(.)) * 40 degrees (fc_theta without bias). Each of the n kernels is rotated by its angle
and the sample's kernel is sum_i alpha_i R(theta_i) W_i; the sample is convolved with it (one grouped conv over
the batch). The official weights init: trunc-normal(0.02) routing, kaiming-normal (fan_out) kernels.

The rotation here resamples the kernel grid bilinearly for any odd k: tap p (offset from the centre, x to the
right, y down) of the rotated kernel takes the value of the original at R(-theta) p, zero outside the grid, so a
positive angle turns the kernel clockwise as an image is drawn (rows down); a quarter turn is exactly ``rot90``. The official code hard-codes a 3x3 interpolation of its own (the outer ring
of taps moving along the ring), which this does not reproduce.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.conv import conv_reference
from archdsl.ops.references import ref_sigmoid
from archdsl.ops.registry import Attr, op, positive
from archdsl.ops.shapes import need_spatial, numel, odd


def rotation_matrices(theta: torch.Tensor, k: int) -> torch.Tensor:
    """(..., k*k, k*k) bilinear resampling matrices: row q (a tap of the rotated kernel) holds the weights of the
    original taps around R(-theta) q."""
    c = (k - 1) / 2
    grid = torch.arange(k, dtype=theta.dtype, device=theta.device) - c
    ys, xs = torch.meshgrid(grid, grid, indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)  # (k*k,) destination taps, row-major
    cos, sin = torch.cos(theta)[..., None], torch.sin(theta)[..., None]
    src_x = cos * xs + sin * ys + c  # R(-theta) applied to the destination offset, back to grid indices
    src_y = -sin * xs + cos * ys + c
    # weight of original tap (i, j) for each destination: the bilinear hat max(0, 1 - |d|) per axis
    wy = (1 - (src_y[..., :, None] - torch.arange(k, dtype=theta.dtype, device=theta.device)).abs()).clamp(min=0)
    wx = (1 - (src_x[..., :, None] - torch.arange(k, dtype=theta.dtype, device=theta.device)).abs()).clamp(min=0)
    return (wy[..., :, :, None] * wx[..., :, None, :]).flatten(-2)


class AdaptiveRotatedConv(nn.Module):
    """ARC over 2-D inputs: n kernels rotated and mixed per sample by a routing branch."""

    _emit_deps = (rotation_matrices,)

    def __init__(self, in_channels, out_channels, kernel_size, kernels=4, stride=1, padding=0, groups=1, bias=False,
                 max_angle=40.0):
        super().__init__()
        self.k, self.kernels, self.stride, self.padding, self.groups = kernel_size, kernels, stride, padding, groups
        self.max_angle = max_angle * math.pi / 180.0
        self.dwc = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.norm = nn.LayerNorm(in_channels)
        self.fc_alpha = nn.Linear(in_channels, kernels)
        self.fc_theta = nn.Linear(in_channels, kernels, bias=False)
        self.weight = nn.Parameter(torch.empty(kernels, out_channels, in_channels // groups, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        for w in (self.dwc.weight, self.fc_alpha.weight, self.fc_theta.weight):
            nn.init.trunc_normal_(w, std=0.02)
        for w in self.weight:
            nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")

    def route(self, x):
        """(alpha, theta), each (N, kernels)."""
        h = self.norm(self.dwc(x).permute(0, 2, 3, 1)).relu().mean((1, 2))
        return torch.sigmoid(self.fc_alpha(h)), F.softsign(self.fc_theta(h)) * self.max_angle

    def sample_kernels(self, x):
        """Each sample's kernel sum_i alpha_i R(theta_i) W_i: (N, out, in/groups, k, k)."""
        alpha, theta = self.route(x)
        mix = rotation_matrices(theta, self.k) * alpha[..., None, None]  # (N, n, k*k, k*k)
        w = self.weight.flatten(3)  # (n, out, in/g, k*k)
        n = x.shape[0]
        kern = torch.matmul(mix.transpose(0, 1).reshape(self.kernels, n * self.k ** 2, self.k ** 2),
                            w.flatten(1, 2).transpose(1, 2))  # (n_kernels, N*k*k, out*in/g)
        kern = kern.reshape(self.kernels, n, self.k ** 2, -1).sum(0)  # (N, k*k, out*in/g)
        return kern.transpose(1, 2).reshape(n, *self.weight.shape[1:])

    def forward(self, x):
        n, c, h, w = x.shape
        kern = self.sample_kernels(x)
        y = F.conv2d(x.reshape(1, n * c, h, w), kern.flatten(0, 1), None, self.stride, self.padding, 1,
                     n * self.groups)
        y = y.reshape(n, -1, *y.shape[2:])
        return y if self.bias is None else y + self.bias.reshape(-1, 1, 1)


def _out(a, ins):
    return a.out or ins[0][0]


def _pad(a):
    return a.k // 2 if a.padding is None else a.padding


def _shape(a, ins):
    need_spatial("arconv", ins[0], dims=(2,))
    c, out = ins[0][0], _out(a, ins)
    if c % a.groups or out % a.groups:
        raise ArchError(f"arconv(): groups={a.groups} must divide input channels {c} and output channels {out} "
                        f"(input shape {list(ins[0])})", hint="choose channels divisible by groups")
    sizes = [(s + 2 * _pad(a) - a.k) // a.stride + 1 for s in ins[0][1:]]
    if min(sizes) < 1:
        raise ArchError(f"arconv(): kernel {a.k} is larger than its padded input (input shape {list(ins[0])})",
                        hint="use a smaller kernel or more padding")
    return (out, *sizes)


def _params(a, ins):
    c, out = ins[0][0], _out(a, ins)
    routing = c * 9 + 2 * c + (c * a.kernels + a.kernels) + c * a.kernels  # dwc, LayerNorm, fc_alpha, fc_theta
    return routing + a.kernels * out * (c // a.groups) * a.k ** 2 + (out if a.bias else 0)


def _macs(a, ins, out_shape):
    # The sample's conv, the routing's depthwise 3x3 and its two linears, and the kernel synthesis: n rotated
    # kernels, each (out * in/groups) taps a (k^2 x k^2) resampling (n * out * in/g * k^4). Per sample.
    c, out = ins[0][0], _out(a, ins)
    conv = numel(out_shape) * (c // a.groups) * a.k ** 2
    routing = numel(ins[0]) * 9 + 2 * c * a.kernels
    return conv + routing + a.kernels * out * (c // a.groups) * a.k ** 4


def _torch(a, ins):
    return AdaptiveRotatedConv, dict(in_channels=ins[0][0], out_channels=_out(a, ins), kernel_size=a.k,
                                     kernels=a.kernels, stride=a.stride, padding=_pad(a), groups=a.groups,
                                     bias=a.bias, max_angle=a.max_angle)


def rotate_kernel_reference(w, theta: float):
    """One (k, k) kernel rotated by theta, tap by tap with scalar bilinear interpolation (float64)."""
    k = w.shape[-1]
    c = (k - 1) / 2
    out = torch.zeros_like(w, dtype=torch.float64)
    for i in range(k):
        for j in range(k):
            dy, dx = i - c, j - c
            sx = math.cos(theta) * dx + math.sin(theta) * dy + c
            sy = -math.sin(theta) * dx + math.cos(theta) * dy + c
            for yi in (math.floor(sy), math.floor(sy) + 1):
                for xi in (math.floor(sx), math.floor(sx) + 1):
                    if 0 <= yi < k and 0 <= xi < k:
                        share = max(0.0, 1 - abs(sy - yi)) * max(0.0, 1 - abs(sx - xi))
                        out[..., i, j] += share * w[..., yi, xi].double()
    return out


def arconv_reference(m, x):
    """Routing by its formulas, each sample's kernel by explicit rotation, each sample's conv by the conv
    reference (float64)."""
    import types

    x = x.double()
    dw = types.SimpleNamespace(weight=m.dwc.weight, bias=None, padding=(1, 1), groups=x.shape[1], kernel_size=(3, 3),
                               stride=(1, 1), dilation=(1, 1))
    h = conv_reference(dw, x).permute(0, 2, 3, 1)
    h = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + m.norm.eps)
    h = h * m.norm.weight.double() + m.norm.bias.double()
    h = (h * (h > 0)).mean((1, 2))
    alpha = ref_sigmoid(h @ m.fc_alpha.weight.double().T + m.fc_alpha.bias.double())
    t = h @ m.fc_theta.weight.double().T
    theta = t / (1 + t.abs()) * m.max_angle
    ys = []
    for b in range(x.shape[0]):
        kern = sum(alpha[b, i].item() * rotate_kernel_reference(m.weight[i].detach(), theta[b, i].item())
                   for i in range(m.kernels))
        conv = types.SimpleNamespace(weight=kern, bias=m.bias, padding=(m.padding,) * 2, groups=m.groups,
                                     kernel_size=(m.k, m.k), stride=(m.stride,) * 2, dilation=(1, 1))
        ys.append(conv_reference(conv, x[b:b + 1]))
    return torch.cat(ys)


op("arconv",
   Attr("k", "int", 3, check=odd, doc="kernel size (odd: rotation about the centre tap)"),
   Attr("out", "int", None, check=positive, doc="output channels (default: in)"),
   Attr("kernels", "int", 4, check=positive, doc="kernels rotated and mixed per sample (the paper's n)"),
   Attr("stride", "int", 1, check=positive),
   Attr("padding", "int", None, doc="default k // 2"),
   Attr("groups", "int", 1, check=positive),
   Attr("bias", "bool", False),
   Attr("max_angle", "float", 40.0, doc="largest rotation in degrees (softsign-scaled; the paper's 40)"),
   shape=_shape, params=_params, macs=_macs, torch=_torch, reference=arconv_reference,
   spatial_dims=(2,), category="mixer", precisions=("fp32", "bf16", "fp16"),
   doc="Adaptive rotated convolution (Pu et al. 2023): n kernels rotated by per-sample angles and mixed by "
       "per-sample weights, both predicted by a routing branch.",
   examples=(({"k": 3}, [(3, 7, 6)]), ({"k": 5, "out": 4, "kernels": 2, "stride": 2, "bias": True}, [(2, 9, 8)]),
             ({"k": 3, "out": 4, "groups": 2, "kernels": 3}, [(4, 5, 5)])))
