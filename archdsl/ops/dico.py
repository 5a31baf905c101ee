"""DiCo's compact channel attention conv block (Ai et al. 2025, "DiCo: Revitalizing ConvNets for Scalable and
Efficient Diffusion Modeling"; shallowdream204/DiCo dico_models.py DiCoBlock), the token mixer that takes
self-attention's place in its blocks:

    y = pw3( z * sigmoid(pw_ca(mean over positions of z)) ),   z = gelu(dw_k(pw1(x)))

pw1, pw_ca, pw3: C -> C pointwise convs with bias; dw_k: a k x k depthwise conv with bias (k = 3 in the paper).
The norm, the adaLN modulation, the gate and the residual around it belong to the block, not to this op.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.ops.references import kernel_offsets, ref_act, ref_sigmoid
from archdsl.ops.registry import Attr, op
from archdsl.ops.shapes import numel, odd, same_shape, spatial


class CompactChannelAttention(nn.Module):
    """pw1 -> depthwise k -> GELU -> channel attention (pool, pw, sigmoid) -> pw3, on (N, C, *positions)."""

    def __init__(self, channels, k=3, dims=2):
        super().__init__()
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
        self.pw1 = conv(channels, channels, 1)
        self.dw = conv(channels, channels, k, padding=k // 2, groups=channels)
        self.ca = conv(channels, channels, 1)
        self.pw3 = conv(channels, channels, 1)

    def forward(self, x):
        z = F.gelu(self.dw(self.pw1(x)))
        pooled = z.mean(tuple(range(2, z.dim())), keepdim=True)
        return self.pw3(z * torch.sigmoid(self.ca(pooled)))


def _ref_pointwise(conv, x):
    w = conv.weight.double().reshape(conv.weight.shape[0], -1)
    return torch.einsum("oc,nc...->no...", w, x) + conv.bias.double().reshape(1, -1, *[1] * (x.dim() - 2))


def _ref_depthwise(conv, x, k):
    """Sum over the kernel's taps of the shifted, zero-padded input times the tap's per-channel weight."""
    dims = x.dim() - 2
    pad = k // 2
    xp = F.pad(x, [pad] * (2 * dims))
    out = torch.zeros_like(x)
    w = conv.weight.double()
    for tap in kernel_offsets((k,) * dims):
        window = xp[(slice(None), slice(None), *(slice(t, t + s) for t, s in zip(tap, x.shape[2:])))]
        out = out + window * w[(slice(None), 0, *tap)].reshape(1, -1, *[1] * dims)
    return out + conv.bias.double().reshape(1, -1, *[1] * dims)


def _reference(m, x):
    x = x.double()
    z = ref_act("gelu", _ref_depthwise(m.dw, _ref_pointwise(m.pw1, x), m.dw.kernel_size[0]))
    flat = z.reshape(*z.shape[:2], -1)
    pooled = (sum(flat[..., i] for i in range(flat.shape[-1])) / flat.shape[-1]).reshape(*z.shape[:2],
                                                                                        *[1] * (z.dim() - 2))
    return _ref_pointwise(m.pw3, z * ref_sigmoid(_ref_pointwise(m.ca, pooled)))


# Counted from DiCoBlock's layers (conv1, conv2, ca[1], conv3 of dico_models.py): three C x C pointwise convs
# with bias, one depthwise k^d conv with bias. MACs: pw1 and pw3 at every position, the depthwise conv at every
# position, the attention's pointwise conv once, on the pooled vector.
def _params(a, ins):
    c = ins[0][0]
    return 3 * c * (c + 1) + c * (a.k ** (len(ins[0]) - 1) + 1)


def _macs(a, ins, out):
    c, positions = ins[0][0], numel(spatial(ins[0]))
    return positions * (2 * c * c + c * a.k ** (len(ins[0]) - 1)) + c * c


op("dico", Attr("k", "int", 3, check=odd, doc="depthwise kernel size (3 in the paper)"),
   shape=same_shape("dico", (1, 2, 3)), params=_params, macs=_macs,
   torch=lambda a, ins: (CompactChannelAttention, dict(channels=ins[0][0], k=a.k, dims=len(ins[0]) - 1)),
   reference=_reference, spatial_dims=(1, 2, 3), category="mixer",
   doc="DiCo compact channel attention: pw -> dw k -> GELU -> x * sigmoid(pw(mean x)) -> pw (Ai et al. 2025).",
   examples=(({}, [(6, 5, 7)]), ({"k": 5}, [(5, 11)]), ({}, [(3, 3, 2, 5)]), ({"k": 1}, [(4, 1, 3)])))
