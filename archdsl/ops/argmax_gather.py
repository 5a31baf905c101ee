"""argmax_gather: at every position, one channel of a tensor chosen by where another tensor peaks.

SpaRTAN's wave-based channel aggregation (Pay et al. 2025; henry-pay/SpaRTAN src/model/spartan.py `CMixer.forward`)
takes, per pixel, the index of the input's largest channel and reads the expanded features `theta` and `weight`
at that channel, (C, H, W) -> (1, H, W), before mixing them back in. Primitives cannot state an argmax (there is
no comparison that yields an index), so this one step is an op; the rest of the module is written in .arch
(archdsl/lib/spartan.arch). The index carries no gradient, as in the official code: only the gathered values do.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.registry import op


class ArgmaxGather(nn.Module):
    def forward(self, values, key):
        return values.gather(1, key.argmax(dim=1, keepdim=True))


def _shape(a, ins):
    values, key = (tuple(s) for s in ins)
    if len(values) < 2 or values[1:] != key[1:]:
        raise ArchError(f"argmax_gather: the values {list(values)} and the key {list(key)} need the same positions",
                        hint="gather from a tensor of the key's spatial size, at least one spatial axis")
    if key[0] > values[0]:
        raise ArchError(f"argmax_gather: the key's {key[0]} channels index past the {values[0]} channels of the "
                        f"values {list(values)}", hint="the values need at least as many channels as the key")
    return (1, *values[1:])


def _reference(m, values, key):
    """Scan the key's channels at each position, keeping the first strictly larger one (torch.argmax's tie rule)."""
    values, key = values.double(), key.double()
    out = torch.empty(values.shape[0], 1, *values.shape[2:], dtype=torch.float64)
    for b in range(values.shape[0]):
        for pos in itertools.product(*(range(s) for s in values.shape[2:])):
            best = 0
            for c in range(1, key.shape[1]):
                if key[(b, c) + pos] > key[(b, best) + pos]:
                    best = c
            out[(b, 0) + pos] = values[(b, best) + pos]
    return out


op("argmax_gather", shape=_shape, arity=2, torch=lambda a, ins: (ArgmaxGather, {}), reference=_reference,
   category="tensor", spatial_dims=(1, 2, 3), min_input_rank=2, exact_in_any_dtype=True,
   doc="`$v >> argmax_gather($key)`: at each position, the channel of v whose index is the argmax over the "
       "key's channels (the first on ties): (C, ...) -> (1, ...). The key needs no more channels than v; no "
       "gradient reaches the key. SpaRTAN's channel aggregation reads its features at the input's peak channel.",
   examples=(({}, [(5, 7), (3, 7)]), ({}, [(6, 5, 3), (6, 5, 3)]), ({}, [(4, 3, 5), (2, 3, 5)])))
