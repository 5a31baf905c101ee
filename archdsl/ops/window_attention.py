"""Swin's (shifted) window attention, `winattn`, on 1-D, 2-D and 3-D feature maps (C, L) / (C, H, W) /
(C, D, H, W).

Sources: microsoft/Swin-Transformer models/swin_transformer.py (`WindowAttention`, `SwinTransformerBlock`) and,
for 3-D and padding, MONAI monai/networks/nets/swin_unetr.py (`SwinTransformerBlock.forward_part1`,
`compute_mask`, `get_window_size`). The map is zero-padded at the end of every spatial dim up to a multiple of
the window (MONAI pads after norm1, so padded tokens are zero vectors that take part in attention, unmasked),
rolled by -shift, cut into non-overlapping windows, attended within each window with a relative position bias
table shared by the windows ((2w1-1)...(2wd-1) rows x heads), rolled back and cropped. With a shift, the last
window of a dim holds tokens that were not neighbours before the roll; the mask adds -100 (the official value)
to the scores between tokens of different regions. A dim the window covers whole is not shifted
(`get_window_size` sets its shift to 0).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.attention import RelAttn, attn_attrs, attn_params, rel_index
from archdsl.ops.references import kernel_offsets, ref_attention, ref_linear, ref_rel_bias
from archdsl.ops.registry import Attr, non_negative, op, positive
from archdsl.ops.shapes import need_heads, need_spatial, numel


def window_partition(x, window):
    """(n, c, *sizes) with sizes divisible by window -> (n * windows, prod(window), c) tokens."""
    n, c, sizes = x.shape[0], x.shape[1], x.shape[2:]
    nd = len(window)
    split = [n, c]
    for s, w in zip(sizes, window):
        split += [s // w, w]
    perm = [0] + [2 + 2 * i for i in range(nd)] + [3 + 2 * i for i in range(nd)] + [1]
    return x.reshape(split).permute(perm).reshape(-1, math.prod(window), c)


def window_reverse(t, window, sizes):
    """Inverse of window_partition: (n * windows, prod(window), c) -> (n, c, *sizes)."""
    nd = len(window)
    grid = [s // w for s, w in zip(sizes, window)]
    c = t.shape[-1]
    x = t.reshape(-1, *grid, *window, c)
    perm = [0, 2 * nd + 1]
    for i in range(nd):
        perm += [1 + i, 1 + nd + i]
    return x.permute(perm).reshape(-1, c, *sizes)


def shift_mask(padded, window, shift):
    """(windows, M, M) scores mask of a grid rolled by -shift: 0 within a region, -100 across regions.

    Per dim of padded size P the rolled positions fall in three regions, [0, P-w), [P-w, P-s), [P-s, P)
    (Swin's three slices); a position's region label combines its per-dim regions."""
    labels = torch.zeros(padded, dtype=torch.float32)
    for d, (p, w, s) in enumerate(zip(padded, window, shift)):
        q = torch.arange(p)
        part = ((q >= p - w).float() + (q >= p - s).float()) if s else torch.zeros(p)
        labels = labels * 3 + part.reshape([-1 if i == d else 1 for i in range(len(padded))])
    win = window_partition(labels[None, None], window)[..., 0]  # (windows, M)
    return (win[:, :, None] != win[:, None, :]).float() * -100.0


shift_mask._emit_deps = (window_partition,)


def padded_size(size, window):
    return tuple(-(-s // w) * w for s, w in zip(size, window))


class WinAttn(nn.Module):
    """Pad, roll by -shift, attend within windows (masked across regions), roll back, crop."""

    _emit_deps = (RelAttn, rel_index, window_partition, window_reverse, shift_mask, padded_size)

    def __init__(self, dim, heads, window, size, shift=None, qkv_bias=True, rel_pos=True):
        super().__init__()
        self.window, self.size = tuple(window), tuple(size)
        self.padded = padded_size(self.size, self.window)
        shift = tuple(shift) if shift is not None else (0,) * len(self.window)
        # one window covers a dim: no shift there (MONAI get_window_size; Swin's min(resolution) <= window rule)
        self.shift = tuple(sh if s > w else 0 for s, w, sh in zip(self.size, self.window, shift))
        self.attn = RelAttn(dim, heads, self.window, qkv_bias=qkv_bias, rel_pos=rel_pos)
        mask = shift_mask(self.padded, self.window, self.shift) if any(self.shift) else None
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x):
        sizes = x.shape[2:]
        pads = [p for s, ps in zip(reversed(sizes), reversed(self.padded)) for p in (0, ps - s)]
        xp = F.pad(x, pads) if any(pads) else x
        dims = tuple(range(2, x.dim()))
        if self.mask is not None:
            xp = torch.roll(xp, [-s for s in self.shift], dims)
        y = window_reverse(self.attn.attend(window_partition(xp, self.window), self.mask), self.window, self.padded)
        if self.mask is not None:
            y = torch.roll(y, list(self.shift), dims)
        return y[(slice(None), slice(None)) + tuple(slice(0, s) for s in sizes)]


def _shift(a):
    return a.shift if a.shift is not None else (0,) * len(a.window)


def _winattn_shape(a, ins):
    need_spatial("winattn", ins[0], (1, 2, 3))
    size = tuple(ins[0][1:])
    if any(w > s for w, s in zip(a.window, size)):
        raise ArchError(f"winattn(): window {list(a.window)} is larger than the input {list(size)} "
                        f"(input shape {list(ins[0])})",
                        hint="use a window no larger than the feature map (Swin clamps it to the map size), "
                             "or relattn for global attention")
    if any(s >= w for s, w in zip(_shift(a), a.window)):
        raise ArchError(f"winattn(): shift {list(_shift(a))} must be smaller than the window {list(a.window)} "
                        f"(input shape {list(ins[0])})", hint="Swin shifts by window // 2 in every other block")
    need_heads("winattn", ins[0][0], a.heads, ins[0])
    return tuple(ins[0])


def _winattn_macs(a, ins, out):
    # every padded position goes through qkv and proj; QK^T and AV are within windows of M = prod(window); the
    # mask and the bias are additions (not counted)
    c, m = ins[0][0], math.prod(a.window)
    n = numel(padded_size(ins[0][1:], a.window))
    return 4 * n * c * c + 2 * n * m * c


def _winattn_reference(m, x):
    """Each window of the rolled grid gathered by explicit index loops from the zero-padded input: the rolled
    position r holds the padded position (r + s) mod P. Two tokens of a window see each other only when both or
    neither wrapped around in every dim (they were neighbours before the roll); the others get -inf."""
    x = x.double()
    n, c = x.shape[:2]
    window, shift, padded = m.window, m.shift, m.padded
    sizes = x.shape[2:]
    crop = (slice(None), slice(None)) + tuple(slice(0, s) for s in sizes)
    xp = torch.zeros(n, c, *padded, dtype=torch.float64)
    xp[crop] = x
    y = torch.zeros_like(xp)
    attn, size = m.attn, len(list(kernel_offsets(window)))
    bias = ref_rel_bias(attn.rel_table, window) if attn.rel_table is not None else torch.zeros(attn.heads, size, size)
    for origin in kernel_offsets(tuple(p // w for p, w in zip(padded, window))):
        rolled = [tuple(o * w + i for o, w, i in zip(origin, window, inner)) for inner in kernel_offsets(window)]
        cells = [tuple((r + s) % p for r, s, p in zip(cell, shift, padded)) for cell in rolled]
        wrapped = [tuple(r + s >= p for r, s, p in zip(cell, shift, padded)) for cell in rolled]
        apart = torch.tensor([[wi != wj for wj in wrapped] for wi in wrapped])
        t = torch.stack([xp[(slice(None), slice(None)) + cell] for cell in cells], dim=1)  # (n, M, c)
        q, k, v = ref_linear(t, attn.qkv).split(c, dim=-1)
        out = ref_attention(q, k, v, attn.heads, (c // attn.heads) ** -0.5, bias.masked_fill(apart, -math.inf))
        out = ref_linear(out, attn.proj)
        for j, cell in enumerate(cells):
            y[(slice(None), slice(None)) + cell] = out[:, j]
    return y[crop]


def _winattn_torch(a, ins):
    return WinAttn, dict(dim=ins[0][0], heads=need_heads("winattn", ins[0][0], a.heads, ins[0]), window=a.window,
                         size=tuple(ins[0][1:]), shift=_shift(a), qkv_bias=a.qkv_bias, rel_pos=a.rel_pos)


op("winattn", Attr("window", "ints", 7, check=positive, doc="window size per spatial dim"),
   Attr("shift", "ints", None, check=non_negative,
        doc="cyclic shift per spatial dim (Swin: 0, then window // 2 in every other block); default 0"),
   *attn_attrs(),
   shape=_winattn_shape,
   params=lambda a, ins: attn_params(ins[0][0], need_heads("winattn", ins[0][0], a.heads, ins[0]), a.window, a),
   macs=_winattn_macs, torch=_winattn_torch, reference=_winattn_reference, spatial_dims=(1, 2, 3),
   category="mixer",
   doc="Swin (shifted) window attention: MHSA within non-overlapping windows (zero-padded to multiples of the "
       "window), the grid rolled by -shift with a mask between regions that were not neighbours, a per-head "
       "relative position bias table (prod(2w-1) x heads); no residual (a block adds it).",
   examples=(({"window": 3, "heads": 2}, [(4, 6, 7)]), ({"window": [2, 3], "heads": 1}, [(3, 5, 6)]),
             ({"window": 4, "heads": 2, "qkv_bias": False}, [(6, 10)]), ({"window": 5, "rel_pos": False}, [(2, 5)]),
             ({"window": 3, "shift": 1, "heads": 2}, [(4, 7, 5)]), ({"window": 4, "shift": 2}, [(3, 9)]),
             ({"window": [2, 3, 2], "shift": [1, 1, 1], "heads": 2}, [(4, 3, 5, 4)]),
             ({"window": 2, "heads": 1}, [(2, 3, 2, 3)])))
