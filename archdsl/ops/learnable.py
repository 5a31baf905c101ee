"""param: a learnable tensor as a value in a chain (a position embedding, a CLS token, an attention-bias table).

`param([C, N], init = trunc_normal(0.02))` holds one tensor of that per-sample shape, in the state dict as
`<node>.weight`. Its result does not depend on its input's values: the input only gives the batch size, so the
tensor is expanded (a view, no copy) to every sample and every op downstream sees an ordinary batched tensor.
It may stand wherever a tensor goes: as a chain element (`cls: param([dim, 1])`) or as an operand
(`add(param([dim, n]))`, `concat(param([dim, 1]), axis = -1)`), where it reads the current tensor.
"""
from __future__ import annotations

import itertools
import math
import re

import torch
from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.registry import Attr, op

_INIT = re.compile(r"(zeros|ones)|(normal|trunc_normal)\(([0-9.eE+-]+)\)")


def parse_init(text: str) -> tuple[str, float]:
    """("zeros" | "ones" | "normal" | "trunc_normal", std) from an init attribute, or an error saying the forms."""
    m = _INIT.fullmatch(text) if isinstance(text, str) else None
    std = 0.0
    if m and m.group(3) is not None:
        try:
            std = float(m.group(3))
        except ValueError:
            m = None
    if m is None or not (math.isfinite(std) and std >= 0):
        raise ArchError(f"param(): init {text!r} is not zeros, ones, normal(std) or trunc_normal(std)",
                        hint="e.g. init = trunc_normal(0.02) (std a non-negative number)")
    return (m.group(1) or m.group(2)), std


def _init_check(v):
    try:
        parse_init(v)
    except ArchError as e:
        return e.message.split(": ", 1)[1]
    return None


def _shape_check(v):
    if not isinstance(v, (list, tuple)) or not v or len(v) > 4:
        return "must be a list of 1 to 4 sizes (one sample's shape, no batch)"
    if any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in v):
        return "must hold positive integers"
    return None


class Param(nn.Module):
    """A learnable tensor, expanded to the batch of the tensor it is applied to."""

    def __init__(self, shape, init="zeros", std=0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(shape))
        with torch.no_grad():
            if init == "ones":
                self.weight.fill_(1.0)
            elif init == "normal":
                self.weight.normal_(0.0, std)
            elif init == "trunc_normal":  # timm's trunc_normal_(std=std): cut at -2 and 2 (absolute)
                nn.init.trunc_normal_(self.weight, std=std)

    def forward(self, x):
        return self.weight.unsqueeze(0).expand(x.shape[0], *self.weight.shape)


def _torch(a, ins):
    kind, std = parse_init(a.init)
    return Param, dict(shape=tuple(a.shape), init=kind, std=std)


def _reference(m, x):
    """Every sample gets the same tensor: the weight stacked once per batch entry."""
    return torch.stack([m.weight.double()] * x.shape[0])


def _shape(a, ins):
    if len(a.shape) > 4:
        raise ArchError(f"param(): shape {list(a.shape)} has more than 4 axes")
    return tuple(a.shape)


op("param", Attr("shape", "any", check=_shape_check, doc="one sample's shape, e.g. [dim, 1] for a CLS token"),
   Attr("init", "str", "zeros", check=_init_check, doc="zeros | ones | normal(std) | trunc_normal(std)"),
   shape=_shape, params=lambda a, ins: math.prod(a.shape), torch=_torch, reference=_reference,
   source=True, category="tensor",
   flop_counter_exact=False,  # no MACs; FlopCounterMode's module tracker fails on the parameter view it returns
   doc="A learnable tensor of the given per-sample shape (position embedding, CLS token, bias table); its input "
       "only gives the batch size. State dict: <node>.weight.",
   examples=(({"shape": [3, 5], "init": "trunc_normal(0.02)"}, [(4, 7)]), ({"shape": [2, 1]}, [(2, 6)]),
             ({"shape": [4], "init": "ones"}, [(3, 2, 2)]), ({"shape": [2, 3, 2], "init": "normal(1.0)"}, [(3, 4, 4)])))



# ---- attention-bias table: a learnable tensor read through a fixed index ----------------------------------------
# LeViT (Graham et al. 2021; timm levit.py `Attention`): one learnable bias per head and per |dy|, |dx| offset
# between query and key positions on an H x W grid, table (heads, H*W), index |dy| * W + |dx|, init zeros. The
# result (heads, N, N), N = H*W, is added to the attention scores.


def abs_offset_index(size):
    """(N, N) index |dy| * W + |dx| (row-major grid positions; any number of dims)."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(s) for s in size], indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).abs()
    index = torch.zeros(rel.shape[1:], dtype=torch.long)
    for d, s in enumerate(size):
        index = index * s + rel[d]
    return index


class BiasTable(nn.Module):
    """LeViT's attention biases (timm names), expanded to the batch of the tensor it is applied to."""

    _emit_deps = (abs_offset_index,)

    def __init__(self, heads, size):
        super().__init__()
        self.attention_biases = nn.Parameter(torch.zeros(heads, math.prod(size)))
        self.size = tuple(size)
        self.register_buffer("attention_bias_idxs", abs_offset_index(self.size), persistent=False)

    def forward(self, x):
        bias = self.attention_biases[:, self.attention_bias_idxs]
        return bias.unsqueeze(0).expand(x.shape[0], *bias.shape)


def _bias_table_reference(m, x):
    """bias[h, i, j] = table[h, |yi - yj| * W + |xi - xj|], position by position."""
    heads, size = m.attention_biases.shape[0], m.size
    positions = list(itertools.product(*(range(s) for s in size)))
    out = torch.empty(heads, len(positions), len(positions), dtype=torch.float64)
    for i, p in enumerate(positions):
        for j, q in enumerate(positions):
            k = 0
            for d, s in enumerate(size):
                k = k * s + abs(p[d] - q[d])
            out[:, i, j] = m.attention_biases[:, k].double()
    return torch.stack([out] * x.shape[0])


def _size_check(v):
    if not isinstance(v, (list, tuple)) or not 1 <= len(v) <= 3 or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in v):
        return "must be a list of 1 to 3 positive grid sizes, e.g. [7, 7]"
    return None


op("bias_table", Attr("heads", "int", check=lambda v: None if v > 0 else "must be positive"),
   Attr("size", "any", check=_size_check, doc="the token grid, [H, W]"),
   shape=lambda a, ins: (a.heads, math.prod(a.size), math.prod(a.size)),
   params=lambda a, ins: a.heads * math.prod(a.size),
   torch=lambda a, ins: (BiasTable, dict(heads=a.heads, size=tuple(a.size))),
   reference=_bias_table_reference, source=True, category="tensor", flop_counter_exact=False,
   doc="LeViT's attention-bias table: a learnable bias per head and per |dy|, |dx| offset of an H x W token "
       "grid (table heads x H*W, init zeros), read out as (heads, N, N) to add to attention scores. Its input "
       "only gives the batch size.",
   examples=(({"heads": 2, "size": [3, 2]}, [(4, 6)]), ({"heads": 3, "size": [5]}, [(2, 5)]),
             ({"heads": 1, "size": [2, 2]}, [(3, 2, 2)])))
