"""`upconv`: the transposed convolution of U-net decoders (1-D / 2-D / 3-D), no padding.

Each input position scatters its kernel (in x out channels x k taps) onto the output at stride * position + tap,
so the output length is (L - 1) * stride + k: k = stride = 2 doubles every spatial size, as the up-sampling of
MONAI's UnetrUpBlock (monai/networks/blocks/unetr_block.py: get_conv_layer(..., kernel_size=2, stride=2,
is_transposed=True), bias=False) and of the original U-net's "up-convolution" (Ronneberger et al. 2015).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.references import kernel_offsets
from archdsl.ops.registry import Attr, op, positive
from archdsl.ops.shapes import need_spatial, numel

_CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def _stride(a):
    return a.stride if a.stride is not None else a.k


def _shape(a, ins):
    need_spatial("upconv", ins[0], (1, 2, 3))
    if any(s > k for s, k in zip(_stride(a), a.k)):
        raise ArchError(f"upconv(): stride {list(_stride(a))} is larger than the kernel {list(a.k)}, which leaves "
                        f"output positions no tap reaches (input shape {list(ins[0])})",
                        hint="use k >= stride (U-nets use k = stride = 2)")
    return (a.out, *[(s - 1) * st + k for s, st, k in zip(ins[0][1:], _stride(a), a.k)])


def _params(a, ins):
    return ins[0][0] * a.out * math.prod(a.k) + (a.out if a.bias else 0)


def _macs(a, ins, out):
    # every input element meets every tap of every output channel once (torch's conv_flop_count for transposed
    # convs: input positions x C_in x C_out x kernel volume)
    return numel(ins[0][1:]) * ins[0][0] * a.out * math.prod(a.k)


def _reference(m, x):
    """Scatter-add: out[o, stride * i + t] += sum_c x[c, i] * w[c, o, t], one kernel tap t at a time (float64)."""
    x = x.double()
    w = m.weight.double()  # (C_in, C_out, *k)
    n, sizes, k, stride = x.shape[0], x.shape[2:], m.kernel_size, m.stride
    out_sizes = [(s - 1) * st + kk for s, st, kk in zip(sizes, stride, k)]
    y = torch.zeros(n, w.shape[1], *out_sizes, dtype=torch.float64)
    for tap in kernel_offsets(tuple(k)):
        where = tuple(slice(t, t + st * (s - 1) + 1, st) for t, st, s in zip(tap, stride, sizes))
        y[(slice(None), slice(None)) + where] += torch.einsum("nc...,co->no...", x, w[(slice(None), slice(None)) + tap])
    if m.bias is not None:
        y += m.bias.double().reshape(1, -1, *[1] * len(sizes))
    return y


op("upconv", Attr("out", "int", check=positive, doc="output channels"),
   Attr("k", "ints", 2, check=positive, doc="kernel size"),
   Attr("stride", "ints", None, check=positive, doc="default: k (non-overlapping taps)"),
   Attr("bias", "bool", True),
   shape=_shape, params=_params, macs=_macs,
   torch=lambda a, ins: (_CONV_T[len(ins[0]) - 1], dict(in_channels=ins[0][0], out_channels=a.out,
                                                        kernel_size=a.k, stride=_stride(a), bias=a.bias)),
   reference=_reference, spatial_dims=(1, 2, 3), min_input_rank=2,
   doc="Transposed convolution without padding (U-net up-convolution): size (L-1)*stride + k, so k = stride = 2 "
       "doubles each spatial size; in-channels come from the input.",
   examples=(({"out": 3}, [(4, 5, 3)]), ({"out": 2, "k": 3, "stride": 2}, [(3, 7)]),
             ({"out": 2, "bias": False}, [(3, 3, 2, 5)]), ({"out": 4, "k": [2, 3], "stride": [2, 1]}, [(2, 3, 4)]),
             ({"out": 1, "k": 1}, [(2, 5)])))
