"""Convolutions and linear layers: conv (1-D/2-D/3-D), dwconv, pwconv, linear."""
from __future__ import annotations

import math

import torch
from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.references import kernel_offsets
from archdsl.ops.registry import Attr, op, positive
from archdsl.ops.shapes import conv_shape, need_spatial, numel, resolve_padding

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


class PaddedConv(nn.Module):
    """A convolution whose padding differs on the two sides of a dim (even kernels with padding='same')."""

    def __init__(self, ndim, pad, **conv):
        super().__init__()
        self.conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[ndim - 1](**conv)
        self.pad = pad

    def forward(self, x):
        return self.conv(torch.nn.functional.pad(x, self.pad))


class TapConv1d(nn.Conv1d):
    """nn.Conv1d (same parameters, state dict and math) for the 1-D convolutions PyTorch's CPU backend runs
    slowly when they are small: dilated ones take a generic path (64 -> 64 channels, k=5, dilation 2, length
    20: ~75 us against ~15 us undilated) and depthwise ones have a ~50 us floor. A small CPU input is
    convolved as the sum over kernel taps it is: a strided view of the padded input holding each output's k
    taps (no copy for depthwise), times the kernel as one batched matmul per group, 2-4x faster there.
    Larger inputs (training batches), other devices, padding modes and string paddings take nn.Conv1d's."""

    # Input elements (batch x channels x length) up to which the taps path is used: measured on 2 x86 cores,
    # depthwise k=7 at 32 x 48 is 26 us against 62 us; at 32 x 64 the batched matmul turns slower (85 us).
    max_elements = 1536

    def forward(self, x):
        small = x.dim() == 3 and x.numel() <= self.max_elements
        if not small or x.device.type != "cpu" or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super().forward(x)
        k, s, d, p = self.kernel_size[0], self.stride[0], self.dilation[0], self.padding[0]
        if p:
            x = torch.nn.functional.pad(x, (p, p))
        taps = x.unfold(-1, d * (k - 1) + 1, s)  # (N, C, L_out, span): each output's window, a view
        if d > 1:
            taps = taps[..., ::d]  # (N, C, L_out, k)
        n, c, length = taps.shape[:3]
        g, w = self.groups, self.weight
        o = w.shape[0]
        # per group: (N, L_out, C/g * k) taps @ (C/g * k, O/g) kernel; a view for depthwise (C/g = 1)
        taps = taps.reshape(n, g, c // g, length, k).transpose(2, 3).reshape(n, g, length, c // g * k)
        y = torch.matmul(taps, w.reshape(g, o // g, -1).transpose(1, 2))  # (N, g, L_out, O/g)
        y = y.transpose(2, 3).reshape(n, o, length)
        return y if self.bias is None else y + self.bias[:, None]


class Linear(nn.Linear):
    """nn.Linear applied to the channel axis (dim 1) of (N, C, ...) tensors; plain nn.Linear on (N, C)."""

    def forward(self, x):
        if x.dim() == 2:
            return super().forward(x)
        # weight @ x over the flattened positions: no channels-last round trip, and a contiguous (N, C, ...)
        # result (about a quarter faster than movedim/linear/movedim on CPU at ConvNeXt sizes)
        y = torch.matmul(self.weight, x.flatten(2))
        if self.bias is not None:
            y = y + self.bias[:, None]
        return y.view(x.shape[0], -1, *x.shape[2:])


def _conv_attrs():
    return (
        Attr("out", "int", check=positive, doc="output channels"),
        Attr("k", "ints", 1, check=positive, doc="kernel size"),
        Attr("stride", "ints", 1, check=positive),
        Attr("padding", "any", None, doc="int, list, 'same', 'valid'; default keeps the size for odd k"),
        Attr("dilation", "ints", 1, check=positive),
        Attr("groups", "int", 1, check=positive),
        Attr("bias", "bool", True),
    )


def conv_facts(a, ins):
    """(in_ch, out_ch, groups) for conv-like ops; dwconv/pwconv derive what they leave out."""
    c = ins[0][0]
    out = a.get("out") or c
    groups = a.get("groups", 1)
    if groups == -1:  # depthwise
        groups = c
    return c, out, groups


def _check_groups(name, c, out, groups, in_shape):
    if c % groups or out % groups:
        raise ArchError(
            f"{name}(): groups={groups} must divide both input channels {c} and output channels {out} "
            f"(input shape {list(in_shape)})",
            hint="choose a channel count divisible by groups, or groups that divides the channels",
        )


def conv_shape_rule(name):
    def rule(a, ins):
        need_spatial(name, ins[0])
        c, out, groups = conv_facts(a, ins)
        _check_groups(name, c, out, groups, ins[0])
        return conv_shape(name, ins[0], out, a.k, a.stride, a.padding, a.dilation)

    return rule


def conv_params(a, ins):
    c, out, groups = conv_facts(a, ins)
    return out * (c // groups) * math.prod(a.k) + (out if a.bias else 0)


def conv_macs(a, ins, out_shape):
    # MACs = output elements x (input channels per group x kernel volume) (the convention of the papers).
    c, out, groups = conv_facts(a, ins)
    return numel(out_shape) * (c // groups) * math.prod(a.k)


def conv_torch(a, ins):
    c, out, groups = conv_facts(a, ins)
    nd = len(ins[0]) - 1
    pads = resolve_padding("conv", a.padding, a.k, a.stride, a.dilation)
    symmetric = all(lo == hi for lo, hi in pads)
    kwargs = dict(in_channels=c, out_channels=out, kernel_size=a.k, stride=a.stride,
                  padding=tuple(lo for lo, _ in pads) if symmetric else 0,
                  dilation=a.dilation, groups=groups, bias=a.bias)
    if symmetric:
        if nd == 1 and (groups > 1 or a.dilation[0] > 1):
            return TapConv1d, kwargs
        return _CONV[nd], kwargs
    flat = tuple(p for lo_hi in reversed(pads) for p in lo_hi)  # F.pad wants the last dim first
    return PaddedConv, dict(ndim=nd, pad=flat, **kwargs)


def conv_reference(module, x):
    """Convolution as an explicit sum over kernel offsets (float64), independent of F.conv*."""
    if isinstance(module, PaddedConv):
        x = torch.nn.functional.pad(x, module.pad)
        module = module.conv
    w, b = module.weight.double(), module.bias
    x = x.double()
    nd = x.dim() - 2
    pad = module.padding
    x = torch.nn.functional.pad(x, [p for p in reversed(pad) for _ in (0, 1)])
    g = module.groups
    n, c = x.shape[:2]
    o = w.shape[0]
    k, s, d = module.kernel_size, module.stride, module.dilation
    out_sizes = [(x.shape[2 + i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(nd)]
    y = torch.zeros(n, o, *out_sizes, dtype=torch.float64)
    xg = x.reshape(n, g, c // g, *x.shape[2:])
    wg = w.reshape(g, o // g, c // g, *k)
    for offset in kernel_offsets(k):
        sl = tuple(slice(offset[i] * d[i], offset[i] * d[i] + s[i] * (out_sizes[i] - 1) + 1, s[i]) for i in range(nd))
        patch = xg[(slice(None), slice(None), slice(None)) + sl]  # n, g, c/g, *out
        wk = wg[(slice(None), slice(None), slice(None)) + tuple(offset)]  # g, o/g, c/g
        y += torch.einsum("ngc...,goc->ngo...", patch, wk).reshape(n, o, *out_sizes)
    if b is not None:
        y += b.double().reshape(1, o, *([1] * nd))
    return y


op("conv", *_conv_attrs(),
   shape=conv_shape_rule("conv"), params=conv_params, macs=conv_macs, torch=conv_torch,
   reference=conv_reference, doc="Convolution over 1-3 spatial dims; in-channels come from the input.",
   fusable=True, triton="conv",
   examples=(({"out": 5, "k": 3}, [(3, 11, 13)]), ({"out": 4, "k": 4, "stride": 2, "padding": 1}, [(2, 9)]),
             ({"out": 6, "k": 3, "groups": 2, "dilation": 2, "bias": False}, [(4, 9, 7)]),
             ({"out": 3, "k": [3, 1, 2], "padding": 0}, [(2, 5, 4, 6)]),
             ({"out": 3, "k": 4, "padding": "same"}, [(2, 7, 8)]), ({"out": 4, "k": 1}, [(3, 6, 5)])))


def _dw_facts_attrs():
    return (Attr("k", "ints", 3, check=positive), Attr("stride", "ints", 1, check=positive),
            Attr("padding", "any", None), Attr("dilation", "ints", 1, check=positive),
            Attr("bias", "bool", True), Attr("mult", "int", 1, check=positive, doc="channel multiplier"))


def _as_dw(a, ins):
    from archdsl.ops.registry import Attrs

    c = ins[0][0]
    return Attrs(a, out=c * a.mult, groups=c)


op("dwconv", *_dw_facts_attrs(),
   shape=lambda a, ins: conv_shape_rule("dwconv")(_as_dw(a, ins), ins),
   params=lambda a, ins: conv_params(_as_dw(a, ins), ins),
   macs=lambda a, ins, o: conv_macs(_as_dw(a, ins), ins, o),
   torch=lambda a, ins: conv_torch(_as_dw(a, ins), ins), reference=conv_reference,
   doc="Depthwise convolution (groups = channels): dwconv(k, stride, padding, dilation, bias, mult).",
   fusable=True, triton="dwconv",
   examples=(({"k": 7}, [(3, 10, 9)]), ({"k": 5, "dilation": 2, "stride": 2}, [(4, 17)]),
             ({"k": 3, "mult": 2, "bias": False}, [(2, 5, 6)])))


def _as_pw(a, ins):
    from archdsl.ops.registry import Attrs

    return Attrs(a, k=(1,) * (len(ins[0]) - 1), stride=(1,) * (len(ins[0]) - 1), padding=0,
                 dilation=(1,) * (len(ins[0]) - 1))


op("pwconv", Attr("out", "int", check=positive), Attr("groups", "int", 1, check=positive), Attr("bias", "bool", True),
   shape=lambda a, ins: conv_shape_rule("pwconv")(_as_pw(a, ins), ins),
   params=lambda a, ins: conv_params(_as_pw(a, ins), ins),
   macs=lambda a, ins, o: conv_macs(_as_pw(a, ins), ins, o),
   torch=lambda a, ins: conv_torch(_as_pw(a, ins), ins), reference=conv_reference,
   doc="Pointwise (1x1) convolution.", fusable=True, triton="pwconv", examples=(({"out": 7}, [(3, 5, 4)]), ({"out": 4, "groups": 2}, [(6, 9)])))


def linear_shape(a, ins):
    return (a.out, *ins[0][1:])


def as_conv(op_name, a, ins):
    """A conv / dwconv / pwconv call's attrs as a plain conv's (the out / groups / k a dwconv or pwconv leaves
    out filled in)."""
    return {"dwconv": _as_dw, "pwconv": _as_pw}.get(op_name, lambda a, ins: a)(a, ins)


op("linear", Attr("out", "int", check=positive), Attr("bias", "bool", True),
   shape=linear_shape,
   params=lambda a, ins: ins[0][0] * a.out + (a.out if a.bias else 0),
   macs=lambda a, ins, out: numel(out) * ins[0][0],  # each output element is a dot product over C inputs
   torch=lambda a, ins: (Linear, dict(in_features=ins[0][0], out_features=a.out, bias=a.bias)),
   reference=lambda m, x: (torch.einsum("nc...,oc->no...", x.double(), m.weight.double())
                           + (m.bias.double().reshape(-1, *([1] * (x.dim() - 2))) if m.bias is not None else 0)),
   doc="Fully connected layer over the channel axis (a 1x1 conv on images, nn.Linear on vectors).",
   fusable=True, triton="linear",
   examples=(({"out": 5}, [(7,)]), ({"out": 3, "bias": False}, [(4, 5, 6)]), ({"out": 2}, [(3, 11)])))
