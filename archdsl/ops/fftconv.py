"""dwconv_fft: a depthwise convolution (stride 1) computed with FFTs.

The deploy pass `select_kernels` picks it for large depthwise kernels on CPU, where PyTorch's direct
depthwise convolution costs O(k^d) per output (a 31x31 RepLKNet kernel: 961 MACs per output element) while
the FFT route costs O(log n) per element whatever k is. Its parameters are a depthwise conv's (weight
(C, 1, *k), bias (C)), so the pass swaps the op and keeps the trained tensors. MACs are reported as the
direct convolution's (what the network computes), so costs stay comparable across the two forms.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.ops.conv import conv_reference
from archdsl.ops.registry import Attr, non_negative, op, positive
from archdsl.ops.shapes import conv_shape, need_spatial, numel


class FFTDepthwiseConv(nn.Module):
    """Depthwise cross-correlation with symmetric zero padding, via rfftn: y = irfft(rfft(x_pad) * rfft(flip w))."""

    def __init__(self, channels, kernel_size, padding, bias=True):
        super().__init__()
        self.padding = tuple(padding)
        self.weight = nn.Parameter(torch.empty(channels, 1, *kernel_size))
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -1 / math.sqrt(math.prod(kernel_size)), 1 / math.sqrt(math.prod(kernel_size)))

    def forward(self, x):
        nd = x.dim() - 2
        xp = F.pad(x, [p for p in reversed(self.padding) for _ in (0, 1)])
        sizes = xp.shape[2:]
        dims = tuple(range(2, 2 + nd))
        w = self.weight[:, 0].flip(dims=tuple(range(1, 1 + nd)))
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        spec = torch.fft.rfftn(xp.to(dtype), s=sizes, dim=dims) * torch.fft.rfftn(
            w.to(dtype), s=sizes, dim=tuple(range(1, 1 + nd)))
        y = torch.fft.irfftn(spec, s=sizes, dim=dims)
        # the full linear convolution is uncontaminated by wrap-around from index k-1 on (sizes >= padded input)
        y = y[(slice(None), slice(None)) + tuple(slice(k - 1, s) for k, s in zip(self.weight.shape[2:], sizes))]
        if self.bias is not None:
            y = y + self.bias.to(dtype).view(1, -1, *([1] * nd))
        return y.to(x.dtype)


def _shape(a, ins):
    need_spatial("dwconv_fft", ins[0], dims=(1, 2))
    return conv_shape("dwconv_fft", ins[0], ins[0][0], a.k, (1,) * len(a.k), a.padding, (1,) * len(a.k))


def _reference(m, x):
    conv = type("DenseDepthwise", (), dict(weight=m.weight, bias=m.bias, padding=m.padding, groups=m.weight.shape[0],
                                          kernel_size=tuple(m.weight.shape[2:]), stride=(1,) * (x.dim() - 2),
                                          dilation=(1,) * (x.dim() - 2)))
    return conv_reference(conv, x)


op("dwconv_fft", Attr("k", "ints", check=positive), Attr("padding", "ints", 0, check=non_negative),
   Attr("bias", "bool", True),
   shape=_shape,
   params=lambda a, ins: ins[0][0] * math.prod(a.k) + (ins[0][0] if a.bias else 0),
   macs=lambda a, ins, out: numel(out) * math.prod(a.k),  # the direct convolution's count, see above
   torch=lambda a, ins: (FFTDepthwiseConv, dict(channels=ins[0][0], kernel_size=tuple(a.k), padding=tuple(a.padding),
                                                bias=a.bias)),
   reference=_reference, flop_counter_exact=False, precisions=("fp32", "bf16", "fp16"), category="kernel",
   doc="Depthwise conv (stride 1) via FFT: what select_kernels uses for large kernels on CPU.",
   examples=(({"k": 7, "padding": 3}, [(3, 11, 9)]), ({"k": [5, 3], "padding": [2, 1], "bias": False}, [(2, 6, 7)]),
             ({"k": 9, "padding": 4}, [(4, 17)]), ({"k": 3, "padding": 0}, [(2, 8)])))
