"""select_kernels: large depthwise 2-D convolutions run in channels-last memory format (dwconv_cl).

# conv(groups = C = out) | dwconv(mult 1), 2-D, stride 1, dilation 1, k >= 15 -> dwconv_cl(k, padding)   (same weights)

On CPU, PyTorch runs a depthwise convolution of an NCHW input through a direct kernel that is fast up to
13x13 and then falls off a cliff, and through oneDNN when the input is channels-last (measured on 2 cores,
copies included: 31x31 on 1 x 128 x 28 x 28, 30.3 ms vs 0.79 ms; 17x17 on 8 x 96 x 28 x 28, 63 ms vs 3.5 ms;
13x13 on 1 x 96 x 56 x 56, 0.7 ms vs 1.6 ms; 7x7, 0.31 ms vs 0.47 ms). So large kernels switch memory format.
Declined: strided or dilated convs, asymmetric padding. The Triton backend disables this pass: its own
depthwise kernel takes large kernels.
"""
from __future__ import annotations

from archdsl.ir.graph import inputs, order
from archdsl.ops.shapes import resolve_padding
from archdsl.passes.result import PassResult
from archdsl.passes.rewrite import set_op

MIN_KERNEL = 15  # below it the NCHW direct kernel is as fast or faster


def select_kernels(G, weights) -> PassResult:
    """large depthwise 2-D conv -> dwconv_cl (channels-last memory), weights unchanged."""
    res = PassResult()
    for node in order(G):
        d = G.nodes[node]
        if d["op"] not in ("conv", "dwconv"):
            continue
        a = d["attrs"]
        (src,) = inputs(G, node)
        c = G.nodes[src]["shape"][0]
        depthwise = a.mult == 1 if d["op"] == "dwconv" else a.groups == c == a.out
        if not depthwise or len(a.k) != 2 or max(a.k) < MIN_KERNEL:
            continue
        if any(s != 1 for s in a.stride) or any(r != 1 for r in a.dilation):
            res.declined.append((node, "only stride-1, undilated depthwise convs are switched to channels-last"))
            continue
        pads = resolve_padding("conv", a.padding, a.k, a.stride, a.dilation)
        if any(lo != hi for lo, hi in pads):
            res.declined.append((node, "asymmetric padding"))
            continue
        set_op(G, node, "dwconv_cl", dict(k=a.k, padding=tuple(lo for lo, _ in pads), bias=a.bias))
        res.changed.append(f"{node}: depthwise conv {'x'.join(map(str, a.k))} -> dwconv_cl (channels-last)")
    return res
