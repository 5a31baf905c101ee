"""Shape rules and cost formulas shared by op families."""
from __future__ import annotations

import math

from archdsl.errors import ArchError


def spatial(shape) -> tuple[int, ...]:
    return tuple(shape[1:])


def numel(shape) -> int:
    return math.prod(shape)


def same(a, ins):
    """Output shape equals the (first) input shape."""
    return tuple(ins[0])


def need_spatial(op: str, shape, dims=(1, 2, 3)) -> None:
    if len(shape) - 1 not in dims:
        want = " or ".join(f"{d}-D" for d in dims)
        raise ArchError(
            f"{op} needs a {want} input (channels plus spatial dims), got shape {list(shape)}",
            hint="spatial ops apply to images (C, H, W) or sequences (C, L); flatten or pool before a linear head",
        )


def conv_out(size: int, k: int, stride: int, pad_lo: int, pad_hi: int, dilation: int) -> int:
    """Output length of a convolution (the formula in torch.nn.Conv2d's docs)."""
    return (size + pad_lo + pad_hi - dilation * (k - 1) - 1) // stride + 1


def padded_conv_sizes(op: str, shape, k, stride, pads) -> list[int]:
    """Output sizes of a convolution with symmetric padding `pads` (per spatial dim) on input `shape` (C, ...);
    an error naming `op` when the kernel does not fit its padded input."""
    sizes = [conv_out(s, kk, st, p, p, 1) for s, kk, st, p in zip(shape[1:], k, stride, pads)]
    if min(sizes) < 1:
        raise ArchError(f"{op}(): kernel {list(k)} is larger than its padded input (input shape {list(shape)})",
                        hint="use a smaller kernel or more padding")
    return sizes


def same_padding(k, dilation) -> tuple[tuple[int, int], ...]:
    """Per-dim (lo, hi) that keeps the size at stride 1: the dilated extent d*(k-1) split in two, the odd one
    out at the end (symmetric for odd kernels)."""
    return tuple(((d * (kk - 1)) // 2, d * (kk - 1) - (d * (kk - 1)) // 2) for kk, d in zip(k, dilation))


def half_kernel(k) -> tuple[int, ...]:
    """k // 2 per dim on both sides: the padding of DCLS and RepLKNet's official code (keeps the size for odd k,
    grows it by one for even k)."""
    return tuple(kk // 2 for kk in k)


def resolve_padding(op, padding, k, stride, dilation):
    """Per-dim (lo, hi) padding from an attribute: an int/list, "same", "valid", or None (the default).

    The default is symmetric ``dilation*(k-1)//2`` for odd kernels (keeps the size at stride 1) and 0 for
    even kernels (patchify stems such as ConvNeXt's 4x4/stride-4 conv, which no symmetric padding centres).
    """
    n = len(k)
    if padding is None:
        return tuple(p if kk % 2 else (0, 0) for p, kk in zip(same_padding(k, dilation), k))
    if padding == "valid":
        return ((0, 0),) * n
    if padding == "same":
        if any(s != 1 for s in stride):
            raise ArchError(f"{op}(): padding='same' needs stride 1, got stride {list(stride)}",
                            hint="give an explicit padding for strided convolutions")
        return same_padding(k, dilation)
    if isinstance(padding, str):
        raise ArchError(f"{op}(): padding must be a number, a list, 'same' or 'valid', got {padding!r}")
    items = list(padding) if isinstance(padding, (list, tuple)) else [padding] * n
    if len(items) != n or any(isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in items):
        raise ArchError(f"{op}(): padding must be {n} non-negative integers, got {padding!r}")
    return tuple((p, p) for p in items)


def conv_shape(op, in_shape, out_ch, k, stride, padding, dilation):
    pads = resolve_padding(op, padding, k, stride, dilation)
    out = []
    for size, kk, s, (lo, hi), d in zip(spatial(in_shape), k, stride, pads, dilation):
        o = conv_out(size, kk, s, lo, hi, d)
        if o < 1:
            raise ArchError(
                f"{op}(): kernel {kk} (dilation {d}, effective size {d * (kk - 1) + 1}) is larger than its padded "
                f"input {size + lo + hi} (input shape {list(in_shape)})",
                hint="use a smaller kernel or dilation, more padding, or downsample less before this op",
            )
        out.append(o)
    return (out_ch, *out)


def odd(v):
    vals = v if isinstance(v, tuple) else (v,)
    return None if all(x > 0 and x % 2 for x in vals) else "must be positive and odd (so the size is kept)"


def need_heads(name, c, heads, in_shape):
    """The head count: given, or C/32 (head size 32, as Swin / MetaFormer / MOAT) when 32 divides C, else 1."""
    if heads is None:
        return c // 32 if c % 32 == 0 else 1
    if c % heads:
        raise ArchError(f"{name}(): heads={heads} does not divide the {c} channels (input shape {list(in_shape)})",
                        hint=f"choose a head count that divides {c}")
    return heads


def same_shape(name, dims=(1, 2, 3)):
    """Shape rule of a mixer that keeps its input shape, for inputs with `dims` spatial dims."""

    def rule(a, ins):
        need_spatial(name, ins[0], dims)
        return tuple(ins[0])

    return rule


def attention_macs(n_q, n_kv, c):
    """q projection on n_q tokens, k/v projections on n_kv tokens, QK^T and AV, output projection."""
    return n_q * c * c + 2 * n_kv * c * c + 2 * n_q * n_kv * c + n_q * c * c


def need_odd(name, what, ks, in_shape):
    """Every kernel size in `ks` is odd (so a branch with padding k//2 keeps the size)."""
    ks = ks if isinstance(ks, (list, tuple)) else (ks,)
    if any(k % 2 == 0 for k in ks):
        raise ArchError(f"{name}(): {what} must be odd so every branch keeps the size, got {list(ks)} "
                        f"(input shape {list(in_shape)})", hint="use an odd kernel size")
