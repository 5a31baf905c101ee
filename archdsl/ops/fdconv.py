"""Frequency dynamic convolution: fdconv (frequency-disjoint weights + kernel spatial modulation).

Chen et al., "Frequency Dynamic Convolution for Dense Image Prediction" (CVPR 2025); official code
Linwei-Chen/FDConv. One parameter budget, the kernel as a (out x in*k^d) matrix held in the Fourier domain
(the rfft2 of an ordinarily initialised kernel: the official init), is split into ``kernels`` groups of disjoint
frequencies, sorted by radius from the zero frequency into equal-sized bands; weight i is the inverse DFT of its
band alone (Fourier Disjoint Weights), so the n weights differ in frequency at the cost of one kernel.

Per sample, a global branch (average pool >> linear in -> A, no bias >> ReLU) predicts the weights' mixture
(sigmoid * 2 / n, the official kernel attention) and the Kernel Spatial Modulation of the official global KSM:
per-input-channel, per-output-channel and per-tap factors (each sigmoid * 2); the sample's kernel is
    W_b = (sum_i a_bi W_i) * channel_b[in] * filter_b[out] * spatial_b[tap],
applied as one grouped conv over the batch. A = max(in // 16, 16) as officially (reduction 0.0625).

Frequency Band Modulation (``fbm``, the official FrequencyBandModulation with its defaults k_list = [2, 4, 8]):
before the conv, the input is split by its (orthonormal) rfft into bands with max_d |f_d| < 0.5 / k, each band
above the next one multiplied by its own spatial map sigmoid(conv3x3(x) -> 1 channel) * 2 (init ~0: maps of 1),
the lowest band left as it is, and the bands summed. The official code interpolates masks made at 64 x 64 to
the input's size; here they are computed at the input's size.

Not modelled (say so rather than approximate): the official local KSM (a 1-D conv across channels) and the
BatchNorm + StarReLU of the attention branch (a ReLU here).
"""
from __future__ import annotations

import math
import types

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.conv import conv_reference
from archdsl.ops.mixers_freq import _ref_irfftn, _ref_rfftn
from archdsl.ops.references import kernel_offsets, ref_sigmoid
from archdsl.ops.registry import Attr, op, positive
from archdsl.ops.shapes import need_spatial, numel, padded_conv_sizes


def band_masks(sizes, scales) -> torch.Tensor:
    """(len(scales), *rfft grid) 0/1 masks: bins with max_d |f_d| < 0.5 / k (FBM's nested low-pass bands)."""
    freqs = [torch.fft.fftfreq(n, dtype=torch.float64) for n in sizes[:-1]]
    freqs.append(torch.fft.rfftfreq(sizes[-1], dtype=torch.float64))
    grids = torch.meshgrid(*freqs, indexing="ij")
    top = torch.stack([g.abs() for g in grids]).amax(0)
    return torch.stack([(top < 0.5 / k + 1e-8).double() for k in scales])


def frequency_bands(rows: int, cols: int, bands: int) -> torch.Tensor:
    """(bands, rows, cols // 2 + 1) disjoint 0/1 masks over an rfft2 grid: bins sorted by their radius in
    normalised frequency (ties by index), cut into equal runs, lowest frequencies first."""
    u = torch.fft.fftfreq(rows, dtype=torch.float64)[:, None]
    v = torch.fft.rfftfreq(cols, dtype=torch.float64)[None, :]
    order = torch.argsort((u * u + v * v).flatten(), stable=True)
    masks = torch.zeros(bands, order.numel())
    for i, chunk in enumerate(torch.tensor_split(order, bands)):
        masks[i, chunk] = 1.0
    return masks.reshape(bands, rows, cols // 2 + 1)


class FrequencyDynamicConv(nn.Module):
    """FDConv over 1-3 spatial dims (see the module docstring)."""

    _emit_deps = (frequency_bands, band_masks)
    scales = (2, 4, 8)  # FBM's k_list: band edges at 1/2, 1/4, 1/8 of the Nyquist frequency

    def __init__(self, in_channels, out_channels, kernel_size, kernels=4, stride=1, padding=0, bias=True, fbm=True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = tuple(kernel_size), tuple(stride), tuple(padding)
        self.kernels, self.out_channels, self.in_channels = kernels, out_channels, in_channels
        taps = math.prod(self.kernel_size)
        self.cols = in_channels * taps
        init = torch.empty(out_channels, in_channels, *self.kernel_size)
        nn.init.kaiming_uniform_(init, a=math.sqrt(5))
        self.spectrum = nn.Parameter(torch.view_as_real(torch.fft.rfft2(init.reshape(out_channels, self.cols))))
        self.register_buffer("bands", frequency_bands(out_channels, self.cols, kernels), persistent=False)
        hidden = max(in_channels // 16, 16)
        self.fc = nn.Linear(in_channels, hidden, bias=False)
        self.kernel_fc = nn.Linear(hidden, kernels)
        self.channel_fc = nn.Linear(hidden, in_channels)
        self.filter_fc = nn.Linear(hidden, out_channels)
        self.spatial_fc = nn.Linear(hidden, taps)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.fbm = None
        if fbm:
            conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[len(self.kernel_size) - 1]
            self.fbm = nn.ModuleList([conv(in_channels, 1, 3, padding=1) for _ in self.scales])
            for m in self.fbm:  # official init 'zero': maps of sigmoid(0) * 2 = 1, FBM starts as the identity
                nn.init.normal_(m.weight, std=1e-6)
                nn.init.zeros_(m.bias)

    def band_modulation(self, x):
        """FBM: the input's frequency bands, each above the lowest times its own spatial map, summed."""
        dims = list(range(2, x.dim()))
        spectrum = torch.fft.rfftn(x, dim=dims, norm="ortho")
        masks = band_masks(tuple(x.shape[2:]), self.scales).to(x.dtype).to(x.device)
        rest, out = x, 0
        for mask, conv in zip(masks, self.fbm):
            low = torch.fft.irfftn(spectrum * mask, s=x.shape[2:], dim=dims, norm="ortho")
            out = out + torch.sigmoid(conv(x)) * 2 * (rest - low)
            rest = low
        return out + rest

    def disjoint_weights(self):
        """The n frequency-disjoint kernels, (n, out, in, *k)."""
        s = torch.view_as_complex(self.spectrum)
        w = torch.fft.irfft2(s * self.bands.to(s.real.dtype), s=(self.out_channels, self.cols))
        return w.reshape(self.kernels, self.out_channels, self.in_channels, *self.kernel_size)

    def sample_kernels(self, x):
        h = F.relu(self.fc(x.flatten(2).mean(2)))
        mix = torch.sigmoid(self.kernel_fc(h)) * (2.0 / self.kernels)  # (N, n)
        w = self.disjoint_weights()
        kern = torch.matmul(mix, w.flatten(1)).reshape(x.shape[0], *w.shape[1:])  # (N, out, in, *k)
        nd = len(self.kernel_size)
        ch = torch.sigmoid(self.channel_fc(h)) * 2
        fi = torch.sigmoid(self.filter_fc(h)) * 2
        sp = torch.sigmoid(self.spatial_fc(h)) * 2
        kern = kern * ch.reshape(ch.shape[0], 1, -1, *([1] * nd)) * fi.reshape(fi.shape[0], -1, 1, *([1] * nd))
        return kern * sp.reshape(sp.shape[0], 1, 1, *self.kernel_size)

    def forward(self, x):
        n, c = x.shape[:2]
        kern = self.sample_kernels(x)
        if self.fbm is not None:
            x = self.band_modulation(x)
        conv = (F.conv1d, F.conv2d, F.conv3d)[len(self.kernel_size) - 1]
        y = conv(x.reshape(1, n * c, *x.shape[2:]), kern.flatten(0, 1), None, self.stride, self.padding, 1, n)
        y = y.reshape(n, self.out_channels, *y.shape[2:])
        return y if self.bias is None else y + self.bias.reshape(-1, *([1] * len(self.kernel_size)))


FBM_SCALES = FrequencyDynamicConv.scales


def _pads(a):
    return tuple(k // 2 for k in a.k) if a.padding is None else a.padding


def _hidden(c):
    return max(c // 16, 16)


def _shape(a, ins):
    need_spatial("fdconv", ins[0])
    sizes = padded_conv_sizes("fdconv", ins[0], a.k, a.stride, _pads(a))
    if a.out * ins[0][0] * math.prod(a.k) < 2 * a.kernels:
        raise ArchError(f"fdconv(): {a.kernels} frequency groups need more frequencies than a {a.out} x "
                        f"{ins[0][0]} x {list(a.k)} kernel has (input shape {list(ins[0])})",
                        hint="use fewer kernels")
    return (a.out, *sizes)


def _params(a, ins):
    c, taps = ins[0][0], math.prod(a.k)
    h = _hidden(c)
    spectrum = 2 * a.out * (c * taps // 2 + 1)  # real and imaginary parts of the rfft2 grid
    heads = c * h + (h * a.kernels + a.kernels) + (h * c + c) + (h * a.out + a.out) + (h * taps + taps)
    fbm = len(FBM_SCALES) * (c * 3 ** len(a.k) + 1) if a.fbm else 0  # one 3^d conv in -> 1 map per band
    return spectrum + heads + (a.out if a.bias else 0) + fbm


def _macs(a, ins, out_shape):
    # The sample's conv; the attention linears; mixing the n weights (n * out * in * k^d). The inverse FFT of
    # the weights is input-independent and not counted (an FFT, as the frequency mixers).
    c, taps = ins[0][0], math.prod(a.k)
    h = _hidden(c)
    heads = c * h + h * (a.kernels + c + a.out + taps)
    fbm = len(FBM_SCALES) * numel(ins[0][1:]) * c * 3 ** len(a.k) if a.fbm else 0  # the band maps' convs
    return numel(out_shape) * c * taps + heads + a.kernels * a.out * c * taps + fbm


def _torch(a, ins):
    return FrequencyDynamicConv, dict(in_channels=ins[0][0], out_channels=a.out, kernel_size=tuple(a.k),
                                      kernels=a.kernels, stride=tuple(a.stride), padding=tuple(_pads(a)), bias=a.bias,
                                      fbm=a.fbm)


def _ref_bands(rows, cols, bands):
    """The band masks by sorting every bin's radius in plain Python (stable on ties, as the module's argsort)."""
    half = cols // 2 + 1
    freq = [(i if i <= (rows - 1) // 2 else i - rows) / rows for i in range(rows)]
    bins = [(freq[i] ** 2 + (j / cols) ** 2, i * half + j) for i in range(rows) for j in range(half)]
    order = [idx for _, idx in sorted(bins, key=lambda t: t[0])]
    masks = torch.zeros(bands, rows * half, dtype=torch.float64)
    size, extra = divmod(len(order), bands)
    start = 0
    for b in range(bands):
        stop = start + size + (1 if b < extra else 0)
        masks[b, order[start:stop]] = 1.0
        start = stop
    return masks.reshape(bands, rows, half)


def _ref_band_modulation(m, x):
    """FBM with explicit DFT matrices, masks by a loop over the bins, maps by the conv reference."""
    sizes = tuple(x.shape[2:])
    nd = len(sizes)
    spectrum = _ref_rfftn(x, nd)
    half = sizes[:-1] + (sizes[-1] // 2 + 1,)
    rest, out = x, 0
    for k, conv in zip(FBM_SCALES, m.fbm):
        mask = torch.zeros(half, dtype=torch.float64)
        for idx in kernel_offsets(half):
            f = [(i if i <= (n - 1) // 2 else i - n) / n for i, n in zip(idx[:-1], sizes[:-1])]
            f.append(idx[-1] / sizes[-1])
            mask[idx] = 1.0 if max(abs(v) for v in f) < 0.5 / k + 1e-8 else 0.0
        low = _ref_irfftn(spectrum * mask, sizes)
        mp = types.SimpleNamespace(weight=conv.weight, bias=conv.bias, padding=(1,) * nd, groups=1,
                                   kernel_size=(3,) * nd, stride=(1,) * nd, dilation=(1,) * nd)
        out = out + ref_sigmoid(conv_reference(mp, x)) * 2 * (rest - low)
        rest = low
    return out + rest


def fdconv_reference(m, x):
    """Disjoint weights by explicit inverse DFT matrices, the attention branch by its formulas, each sample by
    the conv reference (float64)."""
    x = x.double()
    s = torch.complex(m.spectrum[..., 0].double(), m.spectrum[..., 1].double())
    masks = _ref_bands(m.out_channels, m.cols, m.kernels)
    ws = [_ref_irfftn(s * masks[i], (m.out_channels, m.cols), norm="backward") for i in range(m.kernels)]

    def lin(layer, t):
        y = t @ layer.weight.double().T
        return y + layer.bias.double() if layer.bias is not None else y

    h = lin(m.fc, x.flatten(2).mean(2)).clamp(min=0)
    if m.fbm is not None:
        x = _ref_band_modulation(m, x)
    mix = ref_sigmoid(lin(m.kernel_fc, h)) * 2 / m.kernels
    ch, fi, sp = (ref_sigmoid(lin(f, h)) * 2 for f in (m.channel_fc, m.filter_fc, m.spatial_fc))
    out = []
    for b in range(x.shape[0]):
        w = sum(mix[b, i] * ws[i] for i in range(m.kernels)).reshape(m.out_channels, m.in_channels, -1)
        w = w * ch[b][None, :, None] * fi[b][:, None, None] * sp[b][None, None, :]
        conv = types.SimpleNamespace(weight=w.reshape(m.out_channels, m.in_channels, *m.kernel_size), bias=m.bias,
                                     padding=m.padding, groups=1, kernel_size=m.kernel_size, stride=m.stride,
                                     dilation=(1,) * len(m.kernel_size))
        out.append(conv_reference(conv, x[b:b + 1]))
    return torch.cat(out)


op("fdconv",
   Attr("out", "int", check=positive, doc="output channels"),
   Attr("k", "ints", 3, check=positive),
   Attr("kernels", "int", 4, check=positive, doc="frequency-disjoint weights (the paper's n)"),
   Attr("stride", "ints", 1, check=positive),
   Attr("padding", "ints", None, doc="default k // 2"),
   Attr("bias", "bool", True),
   Attr("fbm", "bool", True, doc="frequency band modulation of the input (bands 1/2, 1/4, 1/8 of Nyquist)"),
   shape=_shape, params=_params, macs=_macs, torch=_torch, reference=fdconv_reference, category="mixer",
   precisions=("fp32",),
   doc="Frequency dynamic convolution (Chen et al. 2025): n frequency-disjoint weights from one Fourier-domain "
       "budget, mixed and spatially modulated per sample (kernel spatial modulation).",
   # sizes of 9 and more: every FBM band (1/2, 1/4, 1/8 of Nyquist) holds a frequency, so every map learns
   examples=(({"out": 4, "k": 3}, [(3, 10, 9)]), ({"out": 5, "k": 3, "kernels": 2, "stride": 2}, [(4, 11)]),
             ({"out": 3, "k": [3, 1], "kernels": 3, "bias": False, "fbm": False}, [(2, 6, 5)]),
             ({"out": 2, "k": 3, "kernels": 2, "fbm": False}, [(3, 9)])))
