"""Kernel arithmetic of the folding passes, in float64.

Conv weights are ``(out, in/groups, *k)``; linear weights ``(out, in)``. An eval-mode BatchNorm is the
per-channel affine map ``y = s * x + t`` with ``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s``
(Ioffe & Szegedy 2015; the folding of RepVGG / RepLKNet's ``fuse_bn``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bn_affine(state: dict, eps: float, prefix: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """(s, t) of an eval-mode BatchNorm from its state (running stats; weight / bias when affine)."""
    mean = state[prefix + "running_mean"].double()
    var = state[prefix + "running_var"].double()
    gamma = state.get(prefix + "weight")
    beta = state.get(prefix + "bias")
    s = (gamma.double() if gamma is not None else torch.ones_like(mean)) / torch.sqrt(var + eps)
    t = (beta.double() if beta is not None else torch.zeros_like(mean)) - mean * s
    return s, t


def per_out(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A (out,) vector shaped to scale the output-channel axis of weight w."""
    return v.reshape(-1, *([1] * (w.dim() - 1)))


def scale_out(w, b, s, t=None):
    """``s * (W x + b) + t`` as one (W, b): scale output rows. b may be None (no bias)."""
    b = b if b is not None else torch.zeros(w.shape[0], dtype=w.dtype)
    return w * per_out(s, w), b * s + (t if t is not None else 0)


def scale_in(w, b, s, t, groups: int = 1):
    """``W (s * x + t) + b`` as one (W, b), for a padding-free conv or a linear: scale the input columns of
    each output's group and add what the shift contributes."""
    out, cin_g = w.shape[:2]
    idx = (torch.arange(out) // (out // groups)).reshape(-1, 1) * cin_g + torch.arange(cin_g)  # (out, cin/g)
    spatial = [1] * (w.dim() - 2)
    w2 = w * s[idx].reshape(out, cin_g, *spatial)
    shift = (w * t[idx].reshape(out, cin_g, *spatial)).reshape(out, -1).sum(1)
    return w2, (b if b is not None else torch.zeros(out, dtype=w.dtype)) + shift


def dilate(w: torch.Tensor, dilation) -> torch.Tensor:
    """A kernel k with dilation r as the dense kernel of size r*(k-1)+1 (zeros between the taps)."""
    if all(r == 1 for r in dilation):
        return w
    k = w.shape[2:]
    dense = w.new_zeros(*w.shape[:2], *(r * (kk - 1) + 1 for kk, r in zip(k, dilation)))
    dense[(slice(None), slice(None), *(slice(None, None, r) for r in dilation))] = w
    return dense


def pad_centred(w: torch.Tensor, size) -> torch.Tensor:
    """Zero-pad a kernel's spatial dims to `size`, keeping it centred (each size difference must be even)."""
    pads = []
    for kk, K in zip(reversed(w.shape[2:]), reversed(tuple(size))):
        assert (K - kk) % 2 == 0 and K >= kk, (tuple(w.shape), size)
        pads += [(K - kk) // 2, (K - kk) // 2]
    return F.pad(w, pads)


def identity_kernel(channels: int, in_per_group: int, size, dtype=torch.float64) -> torch.Tensor:
    """The kernel of the identity map (channels in = out) for a conv with `channels / in_per_group` groups:
    a 1 at the centre, from input channel o to output channel o."""
    w = torch.zeros(channels, in_per_group, *size, dtype=dtype)
    centre = tuple(K // 2 for K in size)
    o = torch.arange(channels)
    w[(o, o % in_per_group, *centre)] = 1.0
    return w
