"""Complex-valued convolution, activations and pooling on real / imaginary planes: cconv, cact, cpool, cmag.

"Complex Network for Complex Problems: A comparative study of CNN and Complex-valued CNN" (the seed paper) and
the complex building blocks it uses (Trabelsi et al., "Deep Complex Networks", ICLR 2018). A complex tensor of C
channels is carried as a real tensor of 2C channels: the real planes first, then the imaginary ones, so every
other op (norms, residual adds, pooling of planes) still applies and the IR needs no complex dtype.

- cconv: W = A + iB, z = x + iy:  W * z = (A*x - B*y) + i(B*x + A*y), run as one real conv with the block
  kernel [[A, -B], [B, A]] (2C -> 2 out); a complex bias. 2 * out * C * k^d weights: twice a real conv's.
- cact: CReLU (ReLU of each plane), modReLU (Arjovsky et al. 2016: relu(|z| + b) z / |z|, b learnable per
  channel) or zReLU (Guberman 2016: z where both planes are positive, else 0).
- cpool: max pooling by magnitude (the complex value of largest |z| in each window, both planes from there) or
  average pooling of the planes.
- cmag: |z| (2C -> C), the usual real read-out of a complex network.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.references import kernel_offsets
from archdsl.ops.registry import Attr, op, positive
from archdsl.ops.shapes import need_spatial, numel, padded_conv_sizes


def _planes(name, shape):
    need_spatial(name, shape)
    if shape[0] % 2:
        raise ArchError(f"{name}(): a complex tensor has an even number of channels (real planes, then imaginary), "
                        f"got input shape {list(shape)}", hint="feed it the output of cconv or of a conv with 2C outputs")
    return shape[0] // 2


class ComplexConv(nn.Module):
    """Complex convolution over 1-3 spatial dims on (real planes, imaginary planes)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, bias=True):
        super().__init__()
        nd = len(kernel_size)
        self.stride, self.padding = tuple(stride), tuple(padding)
        self.real = nn.Parameter(torch.empty(out_channels, in_channels, *kernel_size))
        self.imag = nn.Parameter(torch.empty(out_channels, in_channels, *kernel_size))
        # Trabelsi et al.'s complex He init: Rayleigh modulus with variance 2 / fan_in over both parts, here as
        # two independent normals of variance 1 / fan_in each (the same second moment |W|^2 = 2 / fan_in)
        std = 1 / math.sqrt(in_channels * math.prod(kernel_size))
        nn.init.normal_(self.real, 0.0, std)
        nn.init.normal_(self.imag, 0.0, std)
        self.bias = nn.Parameter(torch.zeros(2 * out_channels)) if bias else None
        self.conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]

    def forward(self, x):
        kernel = torch.cat([torch.cat([self.real, -self.imag], 1), torch.cat([self.imag, self.real], 1)], 0)
        return self.conv(x, kernel, self.bias, self.stride, self.padding)


class ComplexActivation(nn.Module):
    def __init__(self, channels, kind="crelu"):
        super().__init__()
        self.kind = kind
        self.bias = nn.Parameter(torch.zeros(channels)) if kind == "modrelu" else None

    def forward(self, x):
        re, im = x.chunk(2, dim=1)
        if self.kind == "crelu":
            return F.relu(x)
        if self.kind == "zrelu":
            return x * ((re > 0) & (im > 0)).repeat(1, 2, *([1] * (x.dim() - 2)))
        mag = torch.sqrt(re * re + im * im + 1e-12)  # a tiny floor keeps the gradient of |z| finite at 0
        scale = F.relu(mag + self.bias.reshape(-1, *([1] * (x.dim() - 2)))) / mag
        return x * scale.repeat(1, 2, *([1] * (x.dim() - 2)))


class ComplexPool(nn.Module):
    def __init__(self, kernel_size, stride, kind="max"):
        super().__init__()
        self.kernel_size, self.stride, self.kind = tuple(kernel_size), tuple(stride), kind

    def forward(self, x):
        nd = x.dim() - 2
        if self.kind == "avg":
            return (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[nd - 1](x, self.kernel_size, self.stride)
        re, im = x.chunk(2, dim=1)
        pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[nd - 1]
        _, index = pool(re * re + im * im, self.kernel_size, self.stride, return_indices=True)
        flat = index.flatten(2)
        pick = [p.flatten(2).gather(2, flat).reshape(index.shape) for p in (re, im)]
        return torch.cat(pick, 1)


class ComplexMagnitude(nn.Module):
    def forward(self, x):
        re, im = x.chunk(2, dim=1)
        return torch.sqrt(re * re + im * im)


def _pads(a):
    return tuple(k // 2 for k in a.k) if a.padding is None else a.padding


def _cconv_shape(a, ins):
    _planes("cconv", ins[0])
    sizes = padded_conv_sizes("cconv", ins[0], a.k, a.stride, _pads(a))
    return (2 * a.out, *sizes)


def to_complex(x):
    re, im = x.double().chunk(2, dim=1)
    return torch.complex(re, im)


def from_complex(z):
    return torch.cat([z.real, z.imag], 1)


def cconv_reference(m, x):
    """Complex arithmetic in complex128: the sum over kernel offsets of W[offset] z[shifted]."""
    z = to_complex(x)
    w = torch.complex(m.real.double(), m.imag.double())
    nd = z.dim() - 2
    zp = F.pad(z.real, [p for p in reversed(m.padding) for _ in (0, 1)]), F.pad(z.imag, [p for p in reversed(
        m.padding) for _ in (0, 1)])
    zp = torch.complex(*zp)
    k, s = w.shape[2:], m.stride
    sizes = [(zp.shape[2 + i] - k[i]) // s[i] + 1 for i in range(nd)]
    y = torch.zeros(z.shape[0], w.shape[0], *sizes, dtype=torch.complex128)
    for off in kernel_offsets(tuple(k)):
        sl = tuple(slice(off[i], off[i] + s[i] * (sizes[i] - 1) + 1, s[i]) for i in range(nd))
        y += torch.einsum("nc...,oc->no...", zp[(slice(None), slice(None), *sl)], w[(slice(None), slice(None), *off)])
    out = from_complex(y)
    return out if m.bias is None else out + m.bias.double().reshape(-1, *([1] * nd))


def cact_reference(m, x):
    z = to_complex(x)
    if m.kind == "crelu":
        out = torch.complex(z.real.clamp(min=0), z.imag.clamp(min=0))
    elif m.kind == "zrelu":
        angle = torch.angle(z)
        out = torch.where((angle > 0) & (angle < math.pi / 2), z, torch.zeros_like(z))
    else:
        b = m.bias.double().reshape(-1, *([1] * (x.dim() - 2)))
        mag = z.abs()
        out = torch.where(mag + b > 0, (mag + b) * z / mag, torch.zeros_like(z))
    return from_complex(out)


def cpool_reference(m, x):
    """Window by window: the element of largest modulus (max) or the mean (avg), in complex128."""
    z = to_complex(x)
    nd = z.dim() - 2
    k, s = m.kernel_size, m.stride
    sizes = [(z.shape[2 + i] - k[i]) // s[i] + 1 for i in range(nd)]
    out = torch.zeros(*z.shape[:2], *sizes, dtype=torch.complex128)
    for pos in kernel_offsets(tuple(sizes)):
        window = z[(slice(None), slice(None), *(slice(p * st, p * st + kk) for p, st, kk in zip(pos, s, k)))]
        window = window.flatten(2)
        if m.kind == "avg":
            out[(slice(None), slice(None), *pos)] = window.mean(2)
        else:
            best = window.abs().argmax(2, keepdim=True)
            out[(slice(None), slice(None), *pos)] = window.gather(2, best)[..., 0]
    return from_complex(out)


def _cact_shape(a, ins):
    _planes("cact", ins[0])
    return tuple(ins[0])


def _cpool_shape(a, ins):
    _planes("cpool", ins[0])
    if any(s < k for s, k in zip(ins[0][1:], a.k)):
        raise ArchError(f"cpool(): window {list(a.k)} is larger than the input (input shape {list(ins[0])})",
                        hint="use a smaller window or pool earlier")
    return (ins[0][0], *[(s - k) // st + 1 for s, k, st in zip(ins[0][1:], a.k, a.stride or a.k)])


op("cconv",
   Attr("out", "int", check=positive, doc="complex output channels (2 * out real planes)"),
   Attr("k", "ints", 3, check=positive), Attr("stride", "ints", 1, check=positive),
   Attr("padding", "ints", None, doc="default k // 2"), Attr("bias", "bool", True),
   shape=_cconv_shape,
   params=lambda a, ins: 2 * a.out * (ins[0][0] // 2) * math.prod(a.k) + (2 * a.out if a.bias else 0),
   # 4 real MACs per complex MAC (the block kernel): 4 * out * C * k^d per complex output position
   macs=lambda a, ins, out: 4 * a.out * (ins[0][0] // 2) * math.prod(a.k) * numel(out[1:]),
   torch=lambda a, ins: (ComplexConv, dict(in_channels=ins[0][0] // 2, out_channels=a.out, kernel_size=tuple(a.k),
                                           stride=tuple(a.stride), padding=tuple(_pads(a)), bias=a.bias)),
   reference=cconv_reference, category="mixer",
   doc="Complex convolution on (real planes, imaginary planes): (A + iB)(x + iy), one real conv with the block "
       "kernel [[A, -B], [B, A]].",
   examples=(({"out": 3, "k": 3}, [(4, 7, 6)]), ({"out": 2, "k": 5, "stride": 2, "bias": False}, [(6, 11)]),
             ({"out": 2, "k": [3, 1]}, [(2, 5, 4)])))

op("cact", Attr("kind", "str", "crelu", choices=("crelu", "modrelu", "zrelu")),
   shape=_cact_shape,
   params=lambda a, ins: ins[0][0] // 2 if a.kind == "modrelu" else 0,
   torch=lambda a, ins: (ComplexActivation, dict(channels=ins[0][0] // 2, kind=a.kind)),
   reference=cact_reference, category="activation",
   doc="Complex activation on (real, imaginary) planes: CReLU, modReLU (learnable bias per channel) or zReLU.",
   examples=(({"kind": "crelu"}, [(4, 5, 6)]), ({"kind": "modrelu"}, [(6, 9)]), ({"kind": "zrelu"}, [(4, 7)]),
             ({"kind": "modrelu"}, [(2, 4, 3)])))

op("cpool", Attr("k", "ints", 2, check=positive), Attr("stride", "ints", None, check=positive),
   Attr("kind", "str", "max", choices=("max", "avg"), doc="max: the value of largest modulus; avg: plane means"),
   shape=_cpool_shape,
   torch=lambda a, ins: (ComplexPool, dict(kernel_size=tuple(a.k), stride=tuple(a.stride or a.k), kind=a.kind)),
   reference=cpool_reference, category="pool",
   doc="Complex pooling: max by modulus (both planes from the winning position) or average of the planes.",
   examples=(({"k": 2}, [(4, 6, 7)]), ({"k": 3, "stride": 2, "kind": "avg"}, [(6, 11)]), ({"k": 3}, [(2, 10)])))

op("cmag", shape=lambda a, ins: (_planes("cmag", ins[0]), *ins[0][1:]),
   torch=lambda a, ins: (ComplexMagnitude, {}),
   reference=lambda m, x: to_complex(x).abs(), category="activation",
   doc="Modulus |z| of a complex tensor (2C planes -> C channels): a complex network's real read-out.",
   examples=(({}, [(4, 5, 6)]), ({}, [(6, 9)])))

