"""dwconv_cl: a depthwise 2-D convolution (stride 1) run in channels-last memory format.

The deploy pass `select_kernels` picks it for large depthwise kernels on CPU. PyTorch's CPU depthwise
convolution on an NCHW (contiguous) input takes a direct path costing k^2 work per output with poor reuse,
while on a channels-last input it takes oneDNN's kernel. Measured on 2 cores, copies to and from
channels-last included: 31x31 on 1 x 128 x 28 x 28, 30.3 ms NCHW vs 0.79 ms; 17x17 on 8 x 96 x 28 x 28,
63 ms vs 3.5 ms; but 7x7 on 1 x 96 x 56 x 56, 0.31 ms NCHW vs 0.47 ms. Its parameters are a depthwise conv's
(weight (C, 1, kh, kw), bias (C)), so the pass swaps the op and keeps the trained tensors.

The result stays channels-last strided (an (N, C, H, W) tensor whose channels are innermost in memory): the
LayerNorm and pointwise linears that follow in a ConvNeXt-style block then read it through its ``movedim(1, -1)``
view, which is contiguous, with no copy (`ChannelLayerNorm`, `channel_linear` in fused.py). An input that is
already channels-last is not copied either, so a chain of such blocks makes no layout conversion at all.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from archdsl.ops.conv import conv_reference
from archdsl.ops.registry import Attr, non_negative, op, positive
from archdsl.ops.shapes import conv_shape, need_spatial, numel


class ChannelsLastDepthwiseConv(nn.Conv2d):
    """nn.Conv2d (depthwise) whose input is made channels-last first (no copy when it already is); the result
    is left channels-last strided (same values as the contiguous one; every op accepts any strides)."""

    def forward(self, x):
        return super().forward(x.contiguous(memory_format=torch.channels_last))


def _shape(a, ins):
    need_spatial("dwconv_cl", ins[0], dims=(2,))
    return conv_shape("dwconv_cl", ins[0], ins[0][0], a.k, (1, 1), a.padding, (1, 1))


op("dwconv_cl", Attr("k", "ints", check=positive), Attr("padding", "ints", 0, check=non_negative),
   Attr("bias", "bool", True),
   shape=_shape,
   params=lambda a, ins: ins[0][0] * math.prod(a.k) + (ins[0][0] if a.bias else 0),
   macs=lambda a, ins, out: numel(out) * math.prod(a.k),  # a depthwise conv: k^2 MACs per output element
   torch=lambda a, ins: (ChannelsLastDepthwiseConv, dict(in_channels=ins[0][0], out_channels=ins[0][0],
                                                         kernel_size=tuple(a.k), padding=tuple(a.padding),
                                                         groups=ins[0][0], bias=a.bias)),
   reference=conv_reference, category="kernel", spatial_dims=(2,),
   doc="Depthwise 2-D conv (stride 1) in channels-last memory: what select_kernels uses for large kernels on CPU.",
   examples=(({"k": 7, "padding": 3}, [(3, 11, 9)]), ({"k": [5, 3], "padding": [2, 1], "bias": False}, [(2, 6, 7)]),
             ({"k": 3, "padding": 0}, [(4, 8, 5)])))
