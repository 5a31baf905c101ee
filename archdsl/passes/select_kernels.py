"""select_kernels: large depthwise convolutions run as FFT convolutions (dwconv_fft).

# conv(groups = C = out) | dwconv(mult 1), stride 1, dilation 1, large k -> dwconv_fft(k, padding)   (same weight, bias)

PyTorch's CPU depthwise convolution is fast up to 13x13 and falls off a cliff above (measured on 2 cores: a
31x31 kernel on 128 x 28 x 28 takes 28.5 ms direct, 4.5 ms by FFT; 13x13 on 96 x 56 x 56 is 0.75 ms direct,
2.9 ms by FFT; 13x13 on 1024 x 4 x 4 is 1.7 ms direct, 1.0 ms by FFT). So: k >= 15, or k >= 13 on a map no
larger than 2k. Declined: strided or dilated convs, asymmetric padding.
The Triton backend disables this pass: its depthwise kernel handles large kernels itself.
"""
from __future__ import annotations

from archdsl.ir.graph import inputs, order
from archdsl.passes.base import PassResult
from archdsl.passes.rewrite import set_op

BIG_KERNEL = 15  # from here on the FFT wins on every map size measured
SMALL_MAP_KERNEL = 13  # ...and from here on when the map is at most 2k wide


def _wins(k: tuple, spatial: tuple) -> bool:
    return max(k) >= BIG_KERNEL or (max(k) >= SMALL_MAP_KERNEL and max(spatial) <= 2 * max(k))


def select_kernels(G, weights) -> PassResult:
    """large depthwise conv -> dwconv_fft (FFT convolution), weights unchanged."""
    res = PassResult()
    for node in order(G):
        d = G.nodes[node]
        if d["op"] not in ("conv", "dwconv"):
            continue
        a = d["attrs"]
        (src,) = inputs(G, node)
        c = G.nodes[src]["shape"][0]
        depthwise = a.mult == 1 if d["op"] == "dwconv" else a.groups == c == a.out
        if not depthwise or not _wins(a.k, tuple(G.nodes[src]["shape"][1:])):
            continue
        if len(a.k) > 2 or any(s != 1 for s in a.stride) or any(r != 1 for r in a.dilation):
            res.declined.append((node, "only stride-1, undilated 1-D/2-D depthwise convs have an FFT kernel"))
            continue
        from archdsl.ops.shapes import resolve_padding

        pads = resolve_padding("conv", a.padding, a.k, a.stride, a.dilation)
        if any(lo != hi for lo, hi in pads):
            res.declined.append((node, "asymmetric padding"))
            continue
        set_op(G, node, "dwconv_fft", dict(k=a.k, padding=tuple(lo for lo, _ in pads), bias=a.bias))
        res.changed.append(f"{node}: depthwise conv {'x'.join(map(str, a.k))} -> dwconv_fft")
    return res
