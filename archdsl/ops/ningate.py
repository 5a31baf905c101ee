"""NiNformer's mixer gating unit (Abdullah & Aydin 2024, "NiNformer: A Network in Network Transformer with Token
Mixing Generated Gating Function", arXiv 2403.02411; Abdullah-88/NiNformer ninformer.py `MixerGatingUnit`), the
block that takes self-attention's place: a whole MLP-Mixer block (the inner network) generates an elementwise
gate for a linear projection of the tokens:

    y = linear(x) * mixer(x),   mixer(t) = t' + cmlp(ln2(t')),  t' = t + tmlp(ln1(t))

on the N positions as tokens of C channels: tmlp mixes along the positions (N -> hidden -> N, GELU), cmlp along
the channels (C -> hidden -> C, GELU); ln1, ln2: LayerNorms over the channels (affine, eps 1e-5). The official
code uses one width for both MLPs (d_ffn, 2 C in its train.py); so does `hidden` here. The token MLP's weights
are sized by N, so the op is tied to its input's resolution (an image's H W positions, row-major). The norm and
the residual around the unit belong to the block (NiNBlock), not to this op.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from archdsl.ops.references import ref_act, ref_linear
from archdsl.ops.registry import Attr, op, positive
from archdsl.ops.shapes import need_spatial, numel, spatial


class MixerGate(nn.Module):
    """linear(x) * MLP-Mixer-block(x) over the positions of (N, C, *pos) as tokens."""

    def __init__(self, channels, positions, hidden):
        super().__init__()
        self.proj = nn.Linear(channels, channels)
        self.ln1, self.ln2 = nn.LayerNorm(channels), nn.LayerNorm(channels)
        self.token1, self.token2 = nn.Linear(positions, hidden), nn.Linear(hidden, positions)
        self.chan1, self.chan2 = nn.Linear(channels, hidden), nn.Linear(hidden, channels)

    def forward(self, x):
        t = x.flatten(2).transpose(1, 2)  # (N, P, C)
        mixed = self.token2(F.gelu(self.token1(self.ln1(t).transpose(1, 2)))).transpose(1, 2)
        g = t + mixed
        g = g + self.chan2(F.gelu(self.chan1(self.ln2(g))))
        return (self.proj(t) * g).transpose(1, 2).reshape(x.shape)


def _ref_ln(ln, t):
    """LayerNorm over the last axis by its formula (biased variance)."""
    mu = t.sum(-1, keepdim=True) / t.shape[-1]
    var = ((t - mu) ** 2).sum(-1, keepdim=True) / t.shape[-1]
    return (t - mu) / (var + ln.eps) ** 0.5 * ln.weight.double() + ln.bias.double()


def _reference(m, x):
    x = x.double()
    t = x.reshape(*x.shape[:2], -1).permute(0, 2, 1)
    h = ref_act("gelu", ref_linear(_ref_ln(m.ln1, t).permute(0, 2, 1), m.token1))
    g = t + ref_linear(h, m.token2).permute(0, 2, 1)
    g = g + ref_linear(ref_act("gelu", ref_linear(_ref_ln(m.ln2, g), m.chan1)), m.chan2)
    return (ref_linear(t, m.proj) * g).permute(0, 2, 1).reshape(x.shape)


def _hidden(a, ins):
    return a.hidden or 2 * ins[0][0]


def _shape(a, ins):
    need_spatial("ningate", ins[0], (1, 2))
    return tuple(ins[0])


# Counted from MixerGatingUnit's layers: proj (C x C + C), MixerBlock's two LayerNorms (2C each), its token
# FeedForward (P -> F -> P: 2 P F + F + P) and channel FeedForward (C -> F -> C: 2 C F + F + C). MACs: proj
# P C^2, the token MLP 2 C P F (C rows of P tokens), the channel MLP 2 P C F.
def _params(a, ins):
    c, p, f = ins[0][0], numel(spatial(ins[0])), _hidden(a, ins)
    return c * c + c + 4 * c + (2 * p * f + f + p) + (2 * c * f + f + c)


def _macs(a, ins, out):
    c, p, f = ins[0][0], numel(spatial(ins[0])), _hidden(a, ins)
    return p * c * c + 4 * c * p * f


op("ningate", Attr("hidden", "int", None, check=positive, doc="width of both inner MLPs (default 2 C, as "
                                                                "the official d_ffn = 2 d_model)"),
   shape=_shape, params=_params, macs=_macs,
   torch=lambda a, ins: (MixerGate, dict(channels=ins[0][0], positions=numel(spatial(ins[0])),
                                         hidden=_hidden(a, ins))),
   reference=_reference, spatial_dims=(1, 2), category="mixer",
   doc="NiNformer gating: linear(x) * MLP-Mixer-block(x) over the positions as tokens (token MLP P -> hidden -> P, "
       "channel MLP C -> hidden -> C, hidden default 2 C); tied to the input's P positions; no residual.",
   examples=(({}, [(4, 5, 6)]), ({"hidden": 7}, [(5, 9)]), ({"hidden": 3}, [(3, 2, 7)])))
