"""fold_kernels: convolutions whose kernel is computed from parameters become plain convs with that kernel.

Which ops fold, and how, is on their registration (``OpSpec.fold``, by "fold_kernels": dcls, wconv). The kernel
is built once, from the trained tensors, by the op's own module (so the deploy conv is the train forward pass
minus the kernel construction): exact up to float rounding.
"""
from __future__ import annotations

import torch

from archdsl.ir.graph import order
from archdsl.ir.modules import input_shapes, module_for, spec_of
from archdsl.ops.registry import get_op
from archdsl.passes.result import PassResult
from archdsl.passes.rewrite import precision_blocker, set_op
from archdsl.passes.weights import float_like, set_wb


def folds_by(G, node, pass_name: str) -> bool:
    """Whether the node's registration folds it in this pass."""
    spec = spec_of(G, node)
    return spec is not None and spec.fold is not None and spec.fold.by == pass_name


def fold_node(G, weights, node) -> str:
    """Rewrite a node as the conv its registration folds it into, its kernel from its trained module; return
    what it was."""
    d = G.nodes[node]
    was, fold = d["op"], get_op(d["op"]).fold
    kernel = bias = like = None
    if weights is not None:
        cls, kwargs = module_for(G, node)
        module = cls(**kwargs).double().eval()
        like = float_like(weights[node])
        with torch.no_grad():
            module.load_state_dict(weights[node])  # into float64 first, so loading does not round the state
            kernel, bias = fold.kernel(module)
    set_op(G, node, "conv", fold.conv(d["attrs"], input_shapes(G, node)))
    if weights is not None:
        set_wb(G, weights, node, kernel, bias, like)
    return was


def fold_kernels(G, weights) -> PassResult:
    """dcls / wconv -> conv with the dense kernel."""
    res = PassResult()
    for node in order(G):
        if not folds_by(G, node, "fold_kernels"):
            continue
        if precision_blocker(G, node):
            res.decline(node, precision_blocker(G, node))
            continue
        was = fold_node(G, weights, node)
        res.changed.append(f"{node}: {was} -> conv (dense {'x'.join(map(str, G.nodes[node]['attrs'].k))} kernel)")
    return res
