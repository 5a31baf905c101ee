"""TiC's MSA-Conv (Zhang et al. 2023, "TiC: Exploring Vision Transformer in Convolution", arXiv 2310.04134;
zs670980918/MSA-Conv core/op/Transformer_in_Convolution.py `MSA_Conv_2d`, with the window products of
core/op/msa_conv_v1_1.py and msa_conv1_v1_1.py): self-attention restricted to the k x k (dilated) convolution
window of every position, so it runs at any resolution:

    q, k, v = split(conv1x1(x))                       (1x1 conv C -> 3C with bias)
    a[p, o] = softmax_o( q[p] . k[p + o] / sqrt(d) )  (o over the k^d window offsets, per head)
    y = relu( conv_k( x + sum_o a[p, o] v[p + o] ) )  (k^d conv C -> out, no bias, same padding)

Outside the grid the official im2col reads zeros: a key there scores 0 and still takes part in the softmax
with a zero value (pad="zero"); pad="none" leaves those slots out of the softmax instead. The official layer
has one head (scale C^-1/2); heads > 1 splits the channels as multi-head attention does (scale d^-1/2, d = C /
heads). The residual around the attention and the closing ReLU are the official layer's, inside this op.
Differences from the official layer: the closing conv is same-padded for every k (the official padding=1 is
only for k = 3), its attention dropout (0.1, training only) is left out, and the 1-D form (a k-wide window on
a sequence) is this op's, with the same arithmetic. A registered op, not a library block: the language has no
primitive that gathers a window around every position.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.ops.references import kernel_offsets, ref_act, ref_softmax
from archdsl.ops.registry import Attr, op, positive
from archdsl.ops.shapes import need_heads, need_spatial, numel, odd, spatial


def _shifted(t, k, dilation, dims):
    """The k^d views of t (..., *pos) moved by each dilated window offset (row-major), zeros outside the grid:
    slices of one zero-padded copy, so no window tensor is gathered (im2col took 3/4 of the time on CPU)."""
    half = dilation * (k - 1) // 2
    size = t.shape[t.dim() - dims:]
    padded = F.pad(t, [half] * (2 * dims))
    lead = (slice(None),) * (t.dim() - dims)
    if dims == 1:
        return [padded[(*lead, slice(i * dilation, i * dilation + size[0]))] for i in range(k)]
    return [padded[(*lead, slice(i * dilation, i * dilation + size[0]), slice(j * dilation, j * dilation + size[1]))]
            for i in range(k) for j in range(k)]


class MSAConv(nn.Module):
    """Windowed multi-head self-attention + residual, then a k^d conv and ReLU (TiC's MSA_Conv_2d)."""

    _emit_deps = (_shifted,)

    def __init__(self, channels, out, k=3, heads=1, dilation=1, pad="zero", dims=2):
        super().__init__()
        conv = (nn.Conv1d, nn.Conv2d)[dims - 1]
        self.qkv = conv(channels, 3 * channels, 1)
        self.proj = conv(channels, out, k, padding=k // 2, bias=False)
        self.k, self.heads, self.dilation, self.pad, self.dims = k, heads, dilation, pad, dims

    def forward(self, x):
        n, c, *size = x.shape
        d = c // self.heads
        q, k, v = (t.reshape(n, self.heads, d, *size) for t in self.qkv(x).chunk(3, dim=1))
        # one score map per window offset: (N, heads, k^d, *pos)
        scores = torch.stack([(q * ks).sum(2) for ks in _shifted(k, self.k, self.dilation, self.dims)], 2)
        scores = scores * d ** -0.5
        if self.pad == "none":  # the slots that fall outside the grid leave the softmax
            inside = torch.stack(_shifted(torch.ones_like(x[0, 0]), self.k, self.dilation, self.dims))
            scores = scores.masked_fill(inside == 0, float("-inf"))
        attn = scores.softmax(dim=2)
        mixed = sum(attn[:, :, i].unsqueeze(2) * vs
                    for i, vs in enumerate(_shifted(v, self.k, self.dilation, self.dims)))
        return F.relu(self.proj(x + mixed.reshape(x.shape)))


def _reference(m, x):
    """Loops over positions and window offsets; the closing conv as a sum of shifted copies."""
    x = x.double()
    n, c, *size = x.shape
    heads, d, dil = m.heads, c // m.heads, m.dilation
    qkv = torch.einsum("oc,nc...->no...", m.qkv.weight.double().flatten(1), x)
    qkv = qkv + m.qkv.bias.double().reshape(1, -1, *[1] * len(size))
    q, kk, v = qkv[:, :c], qkv[:, c:2 * c], qkv[:, 2 * c:]
    mixed = torch.zeros_like(x)
    half = (m.k - 1) // 2
    for pos in kernel_offsets(tuple(size)):
        keys, vals, valid = [], [], []
        for off in kernel_offsets((m.k,) * len(size)):
            at = tuple(p + dil * (o - half) for p, o in zip(pos, off))
            inside = all(0 <= a < s for a, s in zip(at, size))
            keys.append(kk[(slice(None), slice(None), *at)] if inside else torch.zeros(n, c, dtype=x.dtype))
            vals.append(v[(slice(None), slice(None), *at)] if inside else torch.zeros(n, c, dtype=x.dtype))
            valid.append(inside or m.pad == "zero")
        keys, vals = torch.stack(keys, -1), torch.stack(vals, -1)  # (n, c, k^d)
        for h in range(heads):
            ch = slice(h * d, (h + 1) * d)
            s = (q[(slice(None), ch, *pos)].unsqueeze(-1) * keys[:, ch]).sum(1) / d ** 0.5
            w = ref_softmax(s[:, valid])
            mixed[(slice(None), ch, *pos)] = (w.unsqueeze(1) * vals[:, ch][..., valid]).sum(-1)
    y = x + mixed
    w = m.proj.weight.double()
    out = torch.zeros(n, w.shape[0], *size, dtype=x.dtype)
    yp = F.pad(y, [m.k // 2] * (2 * len(size)))
    for off in kernel_offsets((m.k,) * len(size)):
        window = yp[(slice(None), slice(None), *(slice(o, o + s) for o, s in zip(off, size)))]
        out = out + torch.einsum("oc,nc...->no...", w[(slice(None), slice(None), *off)], window)
    return ref_act("relu", out)


def _shape(a, ins):
    need_spatial("msaconv", ins[0], (1, 2))
    need_heads("msaconv", ins[0][0], a.heads, ins[0])
    return (a.out or ins[0][0], *spatial(ins[0]))


def _dims(ins):
    return len(ins[0]) - 1


# Counted from MSA_Conv_2d's layers: qkv_conv (1x1, C -> 3C, bias) and mlp (k x k, C -> out, bias=False); the
# window products have no weights. MACs per position: the qkv conv 3C^2, q.k and a.v over all k^d window slots
# (C k^d each; padded slots too: they are computed, as the official im2col does), the closing conv out C k^d.
# FlopCounterMode sees only the two convs: the window products are elementwise multiplies and sums.
def _params(a, ins):
    c = ins[0][0]
    return 3 * c * c + 3 * c + (a.out or c) * c * a.k ** _dims(ins)


def _macs(a, ins, out):
    c, kd = ins[0][0], a.k ** _dims(ins)
    return numel(spatial(ins[0])) * (3 * c * c + 2 * c * kd + (a.out or c) * c * kd)


def _torch(a, ins):
    c = ins[0][0]
    return MSAConv, dict(channels=c, out=a.out or c, k=a.k, heads=need_heads("msaconv", c, a.heads, ins[0]),
                         dilation=a.dilation, pad=a.pad, dims=_dims(ins))


op("msaconv", Attr("k", "int", 3, check=odd, doc="window (and closing conv) size"),
   Attr("heads", "int", 1, check=positive, doc="attention heads (1 in the official layer)"),
   Attr("dilation", "int", 1, check=positive, doc="spacing of the window's taps"),
   Attr("pad", "str", "zero", choices=("zero", "none"),
        doc="zero: slots outside the grid score 0 with zero values (official); none: they leave the softmax"),
   Attr("out", "int", None, check=positive, doc="output channels of the closing conv (default: C)"),
   shape=_shape, params=_params, macs=_macs, torch=_torch, reference=_reference, spatial_dims=(1, 2),
   category="mixer", flop_counter_exact=False,
   doc="TiC MSA-Conv: multi-head self-attention inside each k^d window (dilated), + residual, then a k^d conv "
       "C -> out (default C, no bias) and ReLU; 3C^2 + 3C + out C k^d parameters.",
   examples=(({}, [(4, 5, 6)]), ({"k": 5, "heads": 2, "pad": "none"}, [(6, 9)]),
             ({"heads": 3, "dilation": 2, "out": 5}, [(6, 4, 5)]), ({"pad": "none"}, [(2, 3, 3)])))
