"""fold_kernels: convolutions whose kernel is computed from parameters become plain convs with that kernel.

The kernel is built once, from the trained tensors, by the op's own module (so the deploy conv is the train
forward pass minus the kernel construction): exact up to float rounding.
"""
from __future__ import annotations

import torch

from archdsl.ir.graph import inputs, order
from archdsl.ir.modules import module_for
from archdsl.passes.result import PassResult
from archdsl.passes.rewrite import precision_blocker, set_op
from archdsl.passes.weights import set_wb


def _dcls_conv(a, ins):
    # dcls(k, count, positions P[, SIG]) -> conv(k, dilation 1): the dense kernel its positions interpolate to;
    # dcls's default padding is k//2 on both sides (also for even k), so it is written out.
    c = ins[0][0]
    out = a.out if a.out is not None else c
    groups = a.groups if a.groups is not None else (c if a.out is None else 1)
    padding = a.padding if a.padding is not None else tuple(k // 2 for k in a.k)
    return dict(out=out, k=a.k, stride=a.stride, padding=padding, dilation=1, groups=groups, bias=a.bias)


def _wconv_conv(a, ins):
    # wconv(k, density) -> conv(k): weight * Phi, the fixed density folded into the kernel.
    return dict(out=a.out, k=a.k, stride=a.stride, padding=a.padding, dilation=a.dilation, groups=a.groups,
                bias=a.bias)


def _dense_kernel(module, state):
    module.double().load_state_dict(state)  # float64 first, so loading does not round the state
    with torch.no_grad():
        if hasattr(module, "kernel"):  # DclsConv
            return module.kernel(), module.bias
        return module.weight * module.Phi, module.bias  # WeightedConv


FOLDS = {"dcls": _dcls_conv, "wconv": _wconv_conv}  # op -> attrs of the equivalent conv


def fold_kernels(G, weights) -> PassResult:
    """dcls / wconv -> conv with the dense kernel."""
    res = PassResult()
    for node in order(G):
        d = G.nodes[node]
        if d["op"] not in FOLDS:
            continue
        if precision_blocker(G, node):
            res.decline(node, precision_blocker(G, node))
            continue
        ins = [tuple(G.nodes[a]["shape"]) for a in inputs(G, node)]
        kernel = bias = like = None
        if weights is not None:
            cls, kwargs = module_for(G, node)
            like = weights[node]["weight"]
            kernel, bias = _dense_kernel(cls(**kwargs), weights[node])
        was = d["op"]
        set_op(G, node, "conv", FOLDS[was](d["attrs"], ins))
        if weights is not None:
            set_wb(G, weights, node, kernel, bias, like)
        res.changed.append(f"{node}: {was} -> conv (dense {'x'.join(map(str, d['attrs'].k))} kernel)")
    return res
