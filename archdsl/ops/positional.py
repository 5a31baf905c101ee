"""gpsa_pos: ConViT's positional attention scores, the learnable half of gated positional self-attention.

ConViT (d'Ascoli et al. 2021; facebookresearch/convit convit.py `GPSA`) gives every query-key pair of an H x W
token grid its relative position r = (dx, dy, dx^2 + dy^2), dx and dy the key's column and row minus the query's,
and scores it per head with pos_proj = Linear(3 -> heads): score[h, i, j] = w_h . r_ij + b_h, (heads, N, N) with
N = H * W. The library's `gpsa` block (archdsl/lib/attention.arch) takes the softmax of these scores and gates
them with content attention, all in .arch primitives.

Why an op rather than `linear(heads)` over a constant table: the method's point is pos_proj's "local"
initialisation (each head starts as one tap of a sqrt(heads) x sqrt(heads) convolution, sharpened by
`locality_strength`), and archdsl's `linear` keeps PyTorch's default initialisation. So the fixed table and the
projection that reads it are one learnable primitive, as LeViT's `bias_table` is. State dict `<node>.weight`
(heads, 3) and `<node>.bias` (heads,): the names and layout of the official `pos_proj`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.registry import Attr, op, positive


def relative_positions(size):
    """(N, N, 3) table of (dx, dy, dx^2 + dy^2) from query i to key j of a row-major H x W grid."""
    h, w = size
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    dx = (cols[None, :] - cols[:, None]).float()
    dy = (rows[None, :] - rows[:, None]).float()
    return torch.stack([dx, dy, dx * dx + dy * dy], dim=-1)


class GpsaPos(nn.Module):
    """pos_proj over the relative positions of a token grid, expanded to the batch of the tensor it is applied to."""

    _emit_deps = (relative_positions,)

    def __init__(self, heads, size, locality_strength=1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(heads, 3))
        self.bias = nn.Parameter(torch.zeros(heads))
        self.size = tuple(size)
        self.register_buffer("rel_indices", relative_positions(tuple(size)), persistent=False)
        with torch.no_grad():
            nn.init.trunc_normal_(self.weight, std=0.02)  # the official _init_weights, before the local init
            # Local init: head h1 + k * h2 of a k x k "kernel" peaks at offset (dx, dy) = (h2 - c, h1 - c), since
            # 2 (h2 - c) dx + 2 (h1 - c) dy - (dx^2 + dy^2) is minus the squared distance to it, plus a constant.
            # Heads beyond k * k (heads not a square) keep their random weights, as in the official code.
            k = math.isqrt(heads)
            c = (k - 1) / 2
            for h1 in range(k):
                for h2 in range(k):
                    self.weight[h1 + k * h2] = torch.tensor([2 * (h2 - c), 2 * (h1 - c), -1.0])
            self.weight.mul_(locality_strength)

    def forward(self, x):
        scores = F.linear(self.rel_indices.to(self.weight.dtype), self.weight, self.bias).permute(2, 0, 1)
        return scores.unsqueeze(0).expand(x.shape[0], *scores.shape)


def _reference(m, x):
    """score[h, i, j] = w_h . (dx, dy, dx^2 + dy^2) + b_h, pair by pair from the grid coordinates."""
    height, width = m.size
    positions = [(r, c) for r in range(height) for c in range(width)]
    wt, b = m.weight.double(), m.bias.double()
    out = torch.empty(wt.shape[0], len(positions), len(positions), dtype=torch.float64)
    for i, (ri, ci) in enumerate(positions):
        for j, (rj, cj) in enumerate(positions):
            dx, dy = cj - ci, rj - ri
            out[:, i, j] = wt[:, 0] * dx + wt[:, 1] * dy + wt[:, 2] * (dx * dx + dy * dy) + b
    return torch.stack([out] * x.shape[0])


def _shape(a, ins):
    """(heads, N, N); the input is the grid's tokens (dim, N), so a grid that they do not fill is caught here."""
    n = math.prod(a.size)
    if len(ins[0]) != 2 or ins[0][1] != n:
        raise ArchError(f"gpsa_pos(): the input {list(ins[0])} is not the tokens (dim, {n}) of the grid {list(a.size)}",
                        hint=f"apply it to the (dim, N) tokens of an H x W grid with H * W = N (size = [H, W]); an "
                             f"image (C, H, W) becomes tokens with flatten(1)")
    return (a.heads, n, n)


def _size_check(v):
    if not isinstance(v, (list, tuple)) or len(v) != 2 or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in v):
        return "must be the token grid [H, W] (two positive sizes; [1, L] for a sequence)"
    return None


op("gpsa_pos", Attr("heads", "int", check=positive),
   Attr("size", "any", check=_size_check, doc="the token grid [H, W]; N = H * W tokens, row-major"),
   Attr("locality_strength", "float", 1.0, check=lambda v: None if v >= 0 else "must be >= 0",
        doc="scales the local initialisation (ConViT's --locality_strength)"),
   shape=_shape, spatial_dims=(1,),
   params=lambda a, ins: 4 * a.heads,
   macs=lambda a, ins, out: 3 * math.prod(out),  # pos_proj: a 3-input dot product per head and token pair
   torch=lambda a, ins: (GpsaPos, dict(heads=a.heads, size=tuple(a.size), locality_strength=a.locality_strength)),
   reference=_reference, source=True, category="tensor",
   doc="ConViT's positional attention scores (heads, N, N) on an H x W token grid: pos_proj = linear(3 -> heads) "
       "of each pair's (dx, dy, dx^2 + dy^2), local init scaled by locality_strength; softmax it for GPSA (the "
       "library's `gpsa`). No residual. Its input is the grid's tokens (dim, N): only their batch size and N "
       "are read.",
   examples=(({"heads": 4, "size": [3, 2]}, [(5, 6)]), ({"heads": 3, "size": [1, 5]}, [(2, 5)]),
             ({"heads": 9, "size": [3, 3], "locality_strength": 0.5}, [(3, 9)]), ({"heads": 2, "size": [2, 2]}, [(1, 4)])))
