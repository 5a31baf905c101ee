"""Frequency-domain and long-convolution mixers: aff (AFFNet frequency filter), globalfilter (GFNet), sgconv.

Each follows its official code for structure, defaults and init. They set flop_counter_exact=False: torch's
FlopCounterMode cannot see an FFT. Their MACs count the work done in the frequency domain by learned weights
(stated per op) and leave the O(N log N) transforms out. References are written independently of the modules,
in float64: explicit DFT matrices and direct circular / causal convolution sums.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.activations import BLOCK_ACTS, act_name
from archdsl.ops.references import kernel_offsets, ref_act
from archdsl.ops.registry import Attr, non_negative, op, positive
from archdsl.ops.shapes import need_spatial, numel, same_shape

# FFTs run in floating point only: there is no int8 or fp8 FFT to lower to.
FFT_PRECISIONS = ("fp32", "bf16", "fp16")


# ------------------------------------------------------------------------------------------ FFT helpers


def fft_dtype(x):
    """FFTs run in float32 / float64 (half-precision FFTs need power-of-two sizes), as the official AFF code."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _ref_dft(n, half=False, inverse=False):
    """The (bins x n) DFT matrix exp(-+2 pi i k t / n), written out; half: bins 0..n//2."""
    k = torch.arange(n // 2 + 1 if half else n, dtype=torch.float64)[:, None]
    t = torch.arange(n, dtype=torch.float64)[None, :]
    sign = 1.0 if inverse else -1.0
    return torch.exp(sign * 2j * math.pi * k * t / n)


def _ref_rfftn(x, ndim):
    """rfftn over the last ndim axes (norm='ortho') by explicit DFT matrices; the last axis is halved."""
    z = x.to(torch.complex128)
    sizes = x.shape[-ndim:]
    for i, n in enumerate(sizes):
        axis = x.dim() - ndim + i
        z = torch.movedim(torch.movedim(z, axis, -1) @ _ref_dft(n, half=i == ndim - 1).T, -1, axis)
    return z / math.sqrt(math.prod(sizes))


def _ref_irfftn(z, sizes, norm="ortho"):
    """irfftn to real `sizes` by explicit inverse DFT matrices: sum of c_k Re(Z e^{+...}), c_k = 2 for the bins
    that stand for a conjugate pair (not DC, not Nyquist), 1 otherwise."""
    ndim = len(sizes)
    for i, n in enumerate(sizes[:-1]):
        axis = z.dim() - ndim + i
        z = torch.movedim(torch.movedim(z, axis, -1) @ _ref_dft(n, inverse=True).T, -1, axis)
    n = sizes[-1]
    weights = torch.full((n // 2 + 1,), 2.0, dtype=torch.float64)
    weights[0] = 1.0
    if n % 2 == 0:
        weights[-1] = 1.0
    y = ((z * weights) @ _ref_dft(n, half=True, inverse=True)).real
    scale = math.sqrt(math.prod(sizes)) if norm == "ortho" else math.prod(sizes)
    return y / scale


# -------------------------------------------------------------------------------------------------- aff
# Adaptive Frequency Filtering token mixer (Huang et al. 2023; microsoft/TokenMixers "Adaptive Frequency
# Filters" affnet/modules/aff_block.py AFNO2D_channelfirst): X = rFFT(x) (ortho); a frequency-dependent mask
# from a 2-layer complex MLP over the channels with block-diagonal weights (num_blocks=8, i.e. a grouped 1x1
# conv on real / imaginary parts), ReLU on real and imaginary parts (the code's default activation), softshrink
# (0.01); y = irFFT(mask * X) + x (the official module adds its input). Weights init 0.02 * randn.


class AFF(nn.Module):
    """Adaptive frequency filter over the spatial dims of a channels-first input (official names)."""

    _emit_deps = (fft_dtype,)

    def __init__(self, dim, num_blocks=8, hidden_size_factor=1, sparsity_threshold=0.01, act="relu"):
        super().__init__()
        self.num_blocks, self.block_size = num_blocks, dim // num_blocks
        self.sparsity_threshold = sparsity_threshold
        hidden = self.block_size * hidden_size_factor
        self.w1 = nn.Parameter(0.02 * torch.randn(2, num_blocks, self.block_size, hidden))
        self.b1 = nn.Parameter(0.02 * torch.randn(2, num_blocks, hidden))
        self.w2 = nn.Parameter(0.02 * torch.randn(2, num_blocks, hidden, self.block_size))
        self.b2 = nn.Parameter(0.02 * torch.randn(2, num_blocks, self.block_size))
        self.act = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}[act]()

    def forward(self, x):
        dims = tuple(range(2, x.dim()))
        z = torch.fft.rfftn(fft_dtype(x), dim=dims, norm="ortho")
        n, bins = x.shape[0], z.shape[2:]
        re = z.real.reshape(n, self.num_blocks, self.block_size, -1)
        im = z.imag.reshape(n, self.num_blocks, self.block_size, -1)

        # deployed at bf16 / fp16, the weights are stored in that dtype; the spectrum is float32 (fft_dtype)
        w1, b1, w2, b2 = (p.to(re.dtype) for p in (self.w1, self.b1, self.w2, self.b2))

        def mm(t, w):  # block-diagonal channel mixing at every frequency: (N, blocks, in, F) x (blocks, in, out)
            return torch.einsum("nkif,kio->nkof", t, w)

        h_re = self.act(mm(re, w1[0]) - mm(im, w1[1]) + b1[0, :, :, None])
        h_im = self.act(mm(im, w1[0]) + mm(re, w1[1]) + b1[1, :, :, None])
        o_re = mm(h_re, w2[0]) - mm(h_im, w2[1]) + b2[0, :, :, None]
        o_im = mm(h_im, w2[0]) + mm(h_re, w2[1]) + b2[1, :, :, None]
        lam = self.sparsity_threshold
        mask = torch.complex(F.softshrink(o_re, lam), F.softshrink(o_im, lam)).reshape(z.shape[0], -1, *bins)
        y = torch.fft.irfftn(mask * z, s=x.shape[2:], dim=dims, norm="ortho")
        return y.to(x.dtype) + x


def _aff_shape(a, ins):
    need_spatial("aff", ins[0])
    c = ins[0][0]
    if c % a.blocks:
        raise ArchError(f"aff(): blocks={a.blocks} does not divide the {c} channels (input shape {list(ins[0])})",
                        hint="the frequency MLP is block-diagonal over channel groups; choose blocks dividing C")
    return tuple(ins[0])


def _bins(ins):
    *lead, last = ins[0][1:]
    return math.prod(lead) * (last // 2 + 1)


def _aff_params(a, ins):
    c = ins[0][0]
    bs, hid = c // a.blocks, c // a.blocks * a.hidden_factor
    return 2 * a.blocks * (bs * hid + hid + hid * bs + bs)


def _aff_macs(a, ins, out):
    # per frequency bin, 4 real block-diagonal products in each of the 2 layers: 8 * C * bs * hidden_factor
    c = ins[0][0]
    return 8 * c * (c // a.blocks) * a.hidden_factor * _bins(ins)


def _aff_reference(m, x):
    """Explicit DFT matrices; the MLP as complex block matrix products (W0 + i W1), softshrink written out."""
    x = x.double()
    sizes = x.shape[2:]
    z = _ref_rfftn(x, len(sizes))
    n, c = x.shape[:2]
    zb = z.reshape(n, m.num_blocks, m.block_size, -1).transpose(2, 3)  # (N, blocks, F, bs)
    act = act_name(m.act)
    w1 = m.w1[0].double() + 1j * m.w1[1].double()
    w2 = m.w2[0].double() + 1j * m.w2[1].double()
    h = zb @ w1 + (m.b1[0].double() + 1j * m.b1[1].double())[:, None, :]
    h = ref_act(act, h.real) + 1j * ref_act(act, h.imag)
    o = h @ w2 + (m.b2[0].double() + 1j * m.b2[1].double())[:, None, :]

    def shrink(t):
        return torch.sign(t) * torch.clamp(t.abs() - m.sparsity_threshold, min=0.0)

    mask = (shrink(o.real) + 1j * shrink(o.imag)).transpose(2, 3).reshape(z.shape)
    return _ref_irfftn(mask * z, tuple(sizes)) + x


op("aff", Attr("blocks", "int", 8, check=positive, doc="channel blocks of the block-diagonal frequency MLP"),
   Attr("hidden_factor", "int", 1, check=positive), Attr("sparsity", "float", 0.01, check=non_negative),
   Attr("act", "str", "relu", choices=tuple(BLOCK_ACTS)),
   shape=_aff_shape, params=_aff_params, macs=_aff_macs, flop_counter_exact=False, precisions=FFT_PRECISIONS,
   torch=lambda a, ins: (AFF, dict(dim=ins[0][0], num_blocks=a.blocks, hidden_size_factor=a.hidden_factor,
                                   sparsity_threshold=a.sparsity, act=a.act)),
   reference=_aff_reference, spatial_dims=(1, 2, 3), category="mixer",
   doc="AFFNet adaptive frequency filter: rFFT, mask = softshrink(block-diagonal complex MLP(X)), irFFT(mask*X) "
       "+ x. MACs: the MLP's 8*C*(C/blocks)*hidden_factor per frequency bin (FFTs not counted).",
   examples=(({"blocks": 2}, [(4, 7, 6)]), ({"blocks": 3, "hidden_factor": 2}, [(6, 9)]),
             ({"blocks": 1, "act": "gelu"}, [(2, 5, 5)]), ({"blocks": 2}, [(4, 10)]),
             ({"blocks": 2, "act": "silu"}, [(2, 3, 4, 5)])))


# ----------------------------------------------------------------------------------------- globalfilter
# GFNet global filter (Rao et al. 2021; raoyongming/GFNet gfnet.py GlobalFilter): X = rFFT2(x) (ortho),
# X * W with a learnable complex weight (init 0.02 * randn; stored as (C, H, W//2+1, 2) real), irFFT2 (ortho).
# Equivalent to a circular depthwise convolution with a full-size kernel.


class GlobalFilter(nn.Module):
    """Learnable per-channel filter in the rFFT domain of the spatial dims (size fixed at build)."""

    _emit_deps = (fft_dtype,)

    def __init__(self, dim, size):
        super().__init__()
        bins = (*size[:-1], size[-1] // 2 + 1)
        self.complex_weight = nn.Parameter(torch.randn(dim, *bins, 2) * 0.02)

    def forward(self, x):
        dims = tuple(range(2, x.dim()))
        # the weight too is made float32 when deployed at bf16 (view_as_complex has no bf16)
        weight = torch.view_as_complex(fft_dtype(self.complex_weight))
        z = torch.fft.rfftn(fft_dtype(x), dim=dims, norm="ortho") * weight
        return torch.fft.irfftn(z, s=x.shape[2:], dim=dims, norm="ortho").to(x.dtype)


def _globalfilter_reference(m, x):
    """Circular depthwise convolution with the spatial kernel k = inverse real DFT of the weight (explicit
    DFT matrices), as an explicit sum over kernel offsets of rolled inputs."""
    x = x.double()
    sizes = tuple(x.shape[2:])
    w = m.complex_weight.double()
    kernel = _ref_irfftn(w[..., 0] + 1j * w[..., 1], sizes, norm="backward")  # (C, *sizes)
    y = torch.zeros_like(x)
    for offset in kernel_offsets(sizes):  # y[c, p] = sum_o k[c, o] x[c, (p - o) mod size]
        tap = kernel[(slice(None),) + tuple(offset)].reshape(1, -1, *([1] * len(sizes)))
        y += tap * torch.roll(x, shifts=tuple(offset), dims=tuple(range(2, x.dim())))
    return y


op("globalfilter",
   shape=same_shape("globalfilter"),
   params=lambda a, ins: 2 * ins[0][0] * _bins(ins),
   # one complex product (4 real multiply-adds) per channel and frequency bin; the FFTs are not counted
   macs=lambda a, ins, out: 4 * ins[0][0] * _bins(ins), flop_counter_exact=False, precisions=FFT_PRECISIONS,
   torch=lambda a, ins: (GlobalFilter, dict(dim=ins[0][0], size=tuple(ins[0][1:]))),
   reference=_globalfilter_reference, spatial_dims=(1, 2, 3), category="mixer",
   doc="GFNet global filter: irFFT(rFFT(x) * W), W a learnable complex (C, H, W//2+1) weight; needs a fixed "
       "input size. MACs: 4 per channel and frequency bin (FFTs not counted).",
   examples=(({}, [(3, 6, 7)]), ({}, [(4, 9)]), ({}, [(2, 5, 4)]), ({}, [(2, 10)]), ({}, [(2, 3, 4, 5)])))


# ----------------------------------------------------------------------------------------------- sgconv
# Structured Global Convolution (Li et al. 2022; ctlllll/SGConv gconv_standalone.py GConv, mode 'cat_randn'):
# num_scales = 1 + ceil(log2(L / kernel_dim)) sub-kernels of kernel_dim=64 taps (randn); sub-kernel i is
# linearly upsampled by 2^max(0, i-1) and weighted alpha^i (the code's multiplier 2^(S-1-i), i.e. alpha = 1/2
# up to a constant the normalization removes); their concatenation, cut to length L, is divided by its norm
# at init (the code's kernel_norm buffer); y = causal conv(u, k) by FFT (n = 2L) + D * u, D ~ randn.
# channels=1, unidirectional; the activation and output linear of the GConv layer are separate ops.
# A (C, H, W) input is read as a raster-order sequence of length H*W (the LRA image tasks' setup).


class SGConv(nn.Module):
    """Per-channel global causal convolution with a multiscale, decaying, sub-linearly parameterized kernel."""

    _emit_deps = (fft_dtype,)

    def __init__(self, dim, kernel_dim=64, num_scales=1, alpha=0.5):
        super().__init__()
        self.alpha = alpha
        self.kernel_list = nn.ParameterList([nn.Parameter(torch.randn(dim, kernel_dim)) for _ in range(num_scales)])
        self.D = nn.Parameter(torch.randn(dim))
        self.register_buffer("kernel_norm", torch.ones(dim, 1))
        with torch.no_grad():
            self.kernel_norm.copy_(self.full_kernel().norm(dim=-1, keepdim=True))

    def full_kernel(self):
        parts = []
        for i, k in enumerate(self.kernel_list):
            scale = 2 ** max(0, i - 1)
            k = k * self.alpha ** i
            if scale > 1:
                k = F.interpolate(k[None], scale_factor=scale, mode="linear")[0]
            parts.append(k)
        return torch.cat(parts, dim=-1)

    def forward(self, x):
        u = x.flatten(2)
        n = u.shape[-1]
        k = self.full_kernel()[:, :n]
        k = F.pad(k, (0, n - k.shape[-1])) / self.kernel_norm
        y = torch.fft.irfft(torch.fft.rfft(fft_dtype(u), n=2 * n) * torch.fft.rfft(fft_dtype(k), n=2 * n), n=2 * n)
        return (y[..., :n].to(x.dtype) + u * self.D[:, None]).reshape(x.shape)


def _sg_scales(a, ins):
    if a.num_scales is not None:
        return a.num_scales
    return max(1, 1 + math.ceil(math.log2(numel(ins[0][1:]) / a.kernel_dim)))


def _sgconv_shape(a, ins):
    need_spatial("sgconv", ins[0], (1, 2))
    length = numel(ins[0][1:])
    used = a.kernel_dim * 2 ** max(0, _sg_scales(a, ins) - 2)  # where the last sub-kernel starts
    if _sg_scales(a, ins) > 1 and used >= length:
        raise ArchError(f"sgconv(): num_scales={a.num_scales} with kernel_dim={a.kernel_dim} puts the last "
                        f"sub-kernel past the sequence length {length} (input shape {list(ins[0])})",
                        hint="leave num_scales unset (1 + ceil(log2(L / kernel_dim))) or lower it")
    return tuple(ins[0])


def _sgconv_reference(m, x):
    """Build the kernel with linear interpolation written out, then the direct causal convolution sum."""
    x = x.double()
    u = x.reshape(*x.shape[:2], -1)
    n = u.shape[-1]
    parts = []
    for i, k in enumerate(m.kernel_list):
        k = k.double() * m.alpha ** i
        s = 2 ** max(0, i - 1)
        size = k.shape[-1]
        up = torch.empty(k.shape[0], size * s, dtype=torch.float64)
        for j in range(size * s):  # align_corners=False: source coordinate (j + 0.5) / s - 0.5, clamped
            src = max((j + 0.5) / s - 0.5, 0.0)
            lo = min(int(math.floor(src)), size - 1)
            hi = min(lo + 1, size - 1)
            frac = src - lo
            up[:, j] = (1 - frac) * k[:, lo] + frac * k[:, hi]
        parts.append(up)
    kernel = torch.cat(parts, dim=-1)
    kernel = torch.cat([kernel, torch.zeros(kernel.shape[0], max(0, n - kernel.shape[-1]), dtype=torch.float64)], -1)
    kernel = kernel[:, :n] / m.kernel_norm.double()
    y = u * m.D.double()[:, None]
    for s in range(n):  # y[t] += k[s] * u[t - s] for t >= s
        y[..., s:] += kernel[:, s:s + 1] * u[..., :n - s]
    return y.reshape(x.shape)


op("sgconv", Attr("kernel_dim", "int", 64, check=positive, doc="taps per sub-kernel"),
   Attr("num_scales", "int", None, check=positive, doc="default 1 + ceil(log2(L / kernel_dim)), at least 1"),
   Attr("alpha", "float", 0.5, check=positive, doc="decay of successive scales"),
   shape=_sgconv_shape,
   params=lambda a, ins: _sg_scales(a, ins) * ins[0][0] * a.kernel_dim + ins[0][0],
   # the spectral product of the 2L-point FFT convolution: 4 real MACs per channel and bin (L + 1 bins)
   macs=lambda a, ins, out: 4 * ins[0][0] * (numel(ins[0][1:]) + 1), flop_counter_exact=False, precisions=FFT_PRECISIONS,
   torch=lambda a, ins: (SGConv, dict(dim=ins[0][0], kernel_dim=a.kernel_dim, num_scales=_sg_scales(a, ins),
                                      alpha=a.alpha)),
   reference=_sgconv_reference, spatial_dims=(1, 2), category="mixer",
   doc="SGConv: per-channel global causal convolution (FFT) with a kernel of multiscale upsampled sub-kernels "
       "decaying by alpha, plus a D skip; 2-D inputs are raster-order sequences. MACs: 4*C*(L+1) (FFTs not "
       "counted).",
   examples=(({"kernel_dim": 4}, [(3, 37)]), ({"kernel_dim": 3, "alpha": 0.7}, [(2, 5, 6)]),
             ({"kernel_dim": 16}, [(2, 9)]), ({"kernel_dim": 5, "num_scales": 2}, [(3, 8)])))
