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


def resolve_padding(op, padding, k, stride, dilation):
    """Per-dim (lo, hi) padding from an attribute: an int/list, "same", "valid", or None (the default).

    The default is symmetric ``dilation*(k-1)//2`` for odd kernels (keeps the size at stride 1) and 0 for
    even kernels (patchify stems such as ConvNeXt's 4x4/stride-4 conv, which no symmetric padding centres).
    """
    n = len(k)
    if padding is None:
        return tuple(((d * (kk - 1)) // 2,) * 2 if kk % 2 else (0, 0) for kk, d in zip(k, dilation))
    if padding == "valid":
        return ((0, 0),) * n
    if padding == "same":
        if any(s != 1 for s in stride):
            raise ArchError(f"{op}(): padding='same' needs stride 1, got stride {list(stride)}",
                            hint="give an explicit padding for strided convolutions")
        out = []
        for kk, d in zip(k, dilation):
            total = d * (kk - 1)
            out.append((total // 2, total - total // 2))
        return tuple(out)
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
