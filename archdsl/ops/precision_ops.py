"""Deploy-time precision ops: what the `lower_precision` pass turns bf16 / fp16 / int8 / fp8 regions into.

- ``cast(to)``: a dtype conversion where a tensor crosses into or out of a bf16 / fp16 region (those regions
  then hold bf16 / fp16 weights and run in that dtype, not under autocast), or dequantizes a quantized tensor
  leaving an int8 region (archdsl/ops/quantized.py).
- ``quantize(scheme)``: quantize-dequantize of an activation: per-tensor affine uint8 with the scale and zero
  point its trained observer settled on (int8), or rounding to an fp8 format. It is the train-mode fake
  quantization made explicit, so deploy computes what QAT trained.
- ``int8_linear`` / ``int8_conv``: real integer kernels: the input is quantized on the fly, weights are
  per-output-channel symmetric int8, and ``torch._int_mm`` multiplies int8 x int8 into int32. The integer
  sum is exact, so the result equals the fake-quantized fp32 computation up to the final scaling.

The module classes are self-contained (math, torch, nn, F only): `archdsl compile -o` copies their source.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.ops.registry import Attr, non_negative, op, positive
from archdsl.ops.shapes import numel

DTYPES = ("float32", "bfloat16", "float16", "float64")
SCHEMES = ("int8", "fp8_e4m3", "fp8_e5m2")


def _levels_check(v):
    return None if v in (127, 255) else "must be 255 (8-bit activations) or 127 (7-bit, `reduce_range`)"


# the top uint8 level of the activation grid QAT / calibration used (archdsl.quant.ActFakeQuant.levels)
LEVELS = Attr("levels", "int", 255, check=_levels_check)


class Cast(nn.Module):
    """x.to(dtype) at a precision boundary."""

    def __init__(self, to="float32"):
        super().__init__()
        self.to_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                         "float64": torch.float64}[to]

    def forward(self, x):
        if x.is_quantized:  # a quantized (quint8) tensor leaving an int8 region
            x = x.dequantize()
        return x.to(self.to_dtype)


class QuantDequant(nn.Module):
    """An activation rounded to int8 (per-tensor affine uint8: scale, zero point) or to an fp8 format."""

    def __init__(self, scheme="int8", levels=255):
        super().__init__()
        self.scheme, self.levels = scheme, levels
        if scheme == "int8":
            self.register_buffer("scale", torch.tensor(0.05))
            self.register_buffer("zero_point", torch.tensor(128.0))

    def forward(self, x):
        if self.scheme == "int8" and x.dtype == torch.float32:  # one pass, the very op training used
            return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point.int(), 0, self.levels)
        if self.scheme == "int8":
            # torch.fake_quantize_per_tensor_affine's arithmetic, for other dtypes: x * (1 / scale), round half
            # to even, clamp to [0, levels]
            q = torch.clamp(torch.round(x * (1.0 / self.scale)) + self.zero_point, 0, self.levels)
            return (q - self.zero_point) * self.scale
        dtype = torch.float8_e4m3fn if self.scheme == "fp8_e4m3" else torch.float8_e5m2
        top = torch.finfo(dtype).max
        return x.clamp(-top, top).to(dtype).to(x.dtype)


class Int8Linear(nn.Module):
    """y = x W^T + b over the channel axis (dim 1) with int8 x int8 -> int32 products (torch._int_mm).

    ``qweight`` (out, in) int8 and ``wscale`` (out,) are the per-channel symmetric weight; ``x_scale`` and
    ``x_zero`` quantize the input to uint8 (stored shifted by -128, as int8, for the kernel)."""

    _frozen_weights = ("qweight", "bias")  # trained weights held as buffers: counted as parameters

    def __init__(self, in_features, out_features, bias=True, levels=255):
        super().__init__()
        self.levels = levels
        self.register_buffer("qweight", torch.randint(-127, 128, (out_features, in_features), dtype=torch.int8))
        self.register_buffer("wscale", torch.full((out_features,), 0.01))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.register_buffer("x_scale", torch.tensor(0.05))
        self.register_buffer("x_zero", torch.tensor(128.0))

    def quantize_input(self, x, pad=None):
        """x as int8 q - 128, q = clamp(round(x / scale) + zero, 0, levels): the uint8 level shifted into int8.
        `pad` (F.pad order) pads with the zero point, the level that dequantizes to exactly 0."""
        q = torch.clamp(torch.round(x * (1.0 / self.x_scale)), -self.x_zero, self.levels - self.x_zero)  # q - zero
        if pad is not None:
            q = F.pad(q, pad)
        return q.add_(self.x_zero - 128).to(torch.int8)

    @staticmethod
    def int_mm_fits(m, k, n, device):
        """Whether torch._int_mm takes these sizes: any on CPU; on CUDA m > 16 and k, n multiples of 8."""
        return device.type == "cpu" or (m > 16 and k % 8 == 0 and n % 8 == 0)

    def matmul(self, cols):
        """(M, in) int8 -> (M, out) float: the exact int32 product, corrected for the zero point, then scaled."""
        if self.int_mm_fits(cols.shape[0], cols.shape[1], self.qweight.shape[0], cols.device):
            acc = torch._int_mm(cols, self.qweight.t())
        else:  # float64 holds every such sum exactly (|sum| < 2^53), so the result is the same integer
            acc = torch.matmul(cols.double(), self.qweight.t().double()).to(torch.int32)
        # q - z = (q - 128) - (z - 128): the zero point's share is (z - 128) * sum_k W[o, k]
        zero = (self.x_zero - 128).to(torch.int32)
        acc = acc - zero * self.qweight.sum(1, dtype=torch.int32)
        scale = self.x_scale * self.wscale
        y = acc.to(scale.dtype)
        return torch.addcmul(self.bias, y, scale) if self.bias is not None else y.mul_(scale)

    def forward(self, x):
        q = self.quantize_input(x)
        if x.dim() == 2:
            return self.matmul(q)
        # channels innermost: free for a channels-last input, one int8 copy otherwise; the result stays
        # channels-last strided, as the fused groups' linears leave theirs
        y = self.matmul(q.movedim(1, -1).reshape(-1, q.shape[1]).contiguous())
        return y.view(*q.movedim(1, -1).shape[:-1], -1).movedim(-1, 1)


class Int8Conv(Int8Linear):
    """A dense (groups = 1) 1-D / 2-D convolution as im2col + the int8 matmul of Int8Linear.

    Padding is applied to the quantized input with the zero point, which dequantizes to exactly 0. The
    columns are strided views of the padded int8 input (one int8 copy to lay them out for the matmul)."""

    _emit_deps = (Int8Linear,)

    def __init__(self, in_channels, out_channels, kernel_size, stride, dilation, pad, bias=True, levels=255):
        super().__init__(in_channels * math.prod(kernel_size), out_channels, bias, levels)
        self.kernel_size, self.stride, self.dilation = tuple(kernel_size), tuple(stride), tuple(dilation)
        self.pad = tuple(pad)  # F.pad order: last dim first, (lo, hi) each

    def forward(self, x):
        q = self.quantize_input(x, self.pad)
        nd = q.dim() - 2
        for i, (k, s, d) in enumerate(zip(self.kernel_size, self.stride, self.dilation)):
            q = q.unfold(2 + i, d * (k - 1) + 1, s)  # (N, C, out..., span...): each output's window
        q = q[(Ellipsis, *[slice(None, None, d) for d in self.dilation])]  # every d-th tap: (..., k...)
        # (N, out..., C, k...) -> (N * prod(out), C * prod(k)): channel-major columns, like the weight
        order = (0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd))
        # contiguous: with one sample and one channel the reshape can stay a view of overlapping windows
        # (row stride < row length), which the int8 matmul does not read as such
        cols = q.permute(order).reshape(-1, self.qweight.shape[1]).contiguous()
        out = q.shape[2:2 + nd]
        y = self.matmul(cols).view(q.shape[0], *out, -1)
        return y.movedim(-1, 1)


# ---- references, written another way: dequantize everything, compute in float64 -----------------------

def _qdq_reference(m, x):
    if m.scheme != "int8":
        dtype = torch.float8_e4m3fn if m.scheme == "fp8_e4m3" else torch.float8_e5m2
        top = torch.finfo(dtype).max
        return torch.clamp(x, -top, top).to(dtype).double()
    s, z = float(m.scale), float(m.zero_point)
    return (torch.clamp(torch.round(x.double() / s) + z, 0, m.levels) - z) * s


def _deq(m):
    return m.qweight.double() * m.wscale.double()[:, None]


def _xdq(m, x):
    s, z = float(m.x_scale), float(m.x_zero)
    return (torch.clamp(torch.round(x.double() / s) + z, 0, m.levels) - z) * s


def _linear_reference(m, x):
    y = torch.einsum("nc...,oc->no...", _xdq(m, x), _deq(m))
    return y + (m.bias.double().reshape(-1, *([1] * (x.dim() - 2))) if m.bias is not None else 0)


def _conv_reference(m, x):
    xd = F.pad(_xdq(m, x), m.pad)  # zero padding after dequantization
    w = _deq(m).reshape(m.qweight.shape[0], x.shape[1], *m.kernel_size)
    conv = F.conv1d if x.dim() == 3 else F.conv2d
    return conv(xd, w, m.bias.double() if m.bias is not None else None, stride=m.stride, dilation=m.dilation)


# ---- registrations --------------------------------------------------------------------------------------

op("cast", Attr("to", "str", choices=DTYPES),
   shape=lambda a, ins: tuple(ins[0]), torch=lambda a, ins: (Cast, dict(to=a.to)),
   reference=lambda m, x: x.to(m.to_dtype), category="kernel",
   doc="Convert to a dtype where a tensor enters or leaves a bf16 / fp16 region (inserted by lower_precision).",
   examples=(({"to": "float64"}, [(3, 7)]), ({"to": "float64"}, [(2, 5, 3)]), ({"to": "float64"}, [(4,)])))

op("quantize", Attr("scheme", "str", "int8", choices=SCHEMES), LEVELS,
   shape=lambda a, ins: tuple(ins[0]), torch=lambda a, ins: (QuantDequant, dict(scheme=a.scheme, levels=a.levels)),
   reference=_qdq_reference, category="kernel",
   doc="Quantize-dequantize an activation (int8: the trained observer's scale and zero point; fp8: rounding).",
   examples=(({}, [(3, 9)]), ({"levels": 127}, [(4, 7)]), ({"scheme": "fp8_e4m3"}, [(2, 5, 3)]),
             ({"scheme": "fp8_e5m2"}, [(4, 6)])))


def _int8_linear_shape(a, ins):
    return (a.out, *ins[0][1:])


op("int8_linear", Attr("out", "int", check=positive), Attr("bias", "bool", True), LEVELS,
   shape=_int8_linear_shape,
   params=lambda a, ins: ins[0][0] * a.out + (a.out if a.bias else 0),
   macs=lambda a, ins, out: numel(out) * ins[0][0],
   torch=lambda a, ins: (Int8Linear, dict(in_features=ins[0][0], out_features=a.out, bias=a.bias, levels=a.levels)),
   reference=_linear_reference, category="kernel", flop_counter_exact=False, precisions=("int8",),
   doc="Linear / 1x1 conv over the channel axis with int8 weights and activations, int32 accumulation.",
   examples=(({"out": 5}, [(7,)]), ({"out": 3, "bias": False}, [(4, 5, 6)]), ({"out": 6, "levels": 127}, [(9, 11)])))


def _int8_conv_shape(a, ins):
    c, *sp = ins[0]
    pads = a.pad_lo, a.pad_hi
    out = [(n + pads[0][i] + pads[1][i] - a.dilation[i] * (a.k[i] - 1) - 1) // a.stride[i] + 1
           for i, n in enumerate(sp)]
    return (a.out, *out)


def _int8_conv_torch(a, ins):
    pad = [p for i in reversed(range(len(a.k))) for p in (a.pad_lo[i], a.pad_hi[i])]
    return Int8Conv, dict(in_channels=ins[0][0], out_channels=a.out, kernel_size=a.k, stride=a.stride,
                          dilation=a.dilation, pad=pad, bias=a.bias, levels=a.levels)


op("int8_conv", Attr("out", "int", check=positive), Attr("k", "ints", check=positive),
   Attr("stride", "ints", 1, check=positive), Attr("dilation", "ints", 1, check=positive),
   Attr("pad_lo", "ints", 0, check=non_negative), Attr("pad_hi", "ints", 0, check=non_negative),
   Attr("bias", "bool", True), LEVELS,
   shape=_int8_conv_shape,
   params=lambda a, ins: ins[0][0] * math.prod(a.k) * a.out + (a.out if a.bias else 0),
   macs=lambda a, ins, out: numel(out) * ins[0][0] * math.prod(a.k),
   torch=_int8_conv_torch, reference=_conv_reference, category="kernel", flop_counter_exact=False,
   precisions=("int8",), spatial_dims=(1, 2),
   doc="Dense 1-D / 2-D conv with int8 weights and activations (im2col + int32 matmul).",
   examples=(({"out": 4, "k": 3, "pad_lo": 1, "pad_hi": 1}, [(3, 11)]),
             ({"out": 5, "k": [3, 2], "stride": 2, "pad_lo": [1, 0], "pad_hi": [0, 1]}, [(2, 7, 6)]),
             ({"out": 3, "k": 5, "stride": 2, "dilation": 2, "pad_lo": 2, "pad_hi": 1, "bias": False, "levels": 127},
              [(4, 17)])))
