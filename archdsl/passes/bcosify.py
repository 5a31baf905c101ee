"""bcosify: turn a trained model's convolutions and linear layers into B-cos layers (B-cosification).

# conv / dwconv / pwconv (dilation 1, symmetric padding) -> bcos(out, k, b, stride, padding, groups)  (same weight)
# linear                                                 -> bcos(out, k = 1, b)                      (same weight)

Arya et al., "B-cosification: Transforming Deep Neural Networks to be Inherently Interpretable" (NeurIPS 2024):
a pre-trained network becomes a B-cos network by swapping its linear transforms for B-cos ones that keep the
trained weights, dropping the biases (a B-cos layer has none: its explanation W(x) x must be the whole output),
and fine-tuning while B is raised. With B = 1 a B-cos layer is its weight normalised to unit rows, so a layer that
already has unit-norm rows and no bias computes exactly what it did (the test's check).

Not a deploy pass (it changes what the model computes): `bcosify(G, weights, b)` is called on a trained graph and
its state, and returns them rewritten with a PassResult saying what changed and what was left (dilated or
asymmetrically padded convs, which the B-cos layer does not take).
"""
from __future__ import annotations

import networkx as nx

from archdsl.ir.graph import order
from archdsl.ir.modules import conv_geometry, input_shapes, weight_keys
from archdsl.passes.result import PassResult
from archdsl.passes.rewrite import set_op

CONVS = ("conv", "dwconv", "pwconv")


def bcosify(G: nx.DiGraph, weights: dict | None, b: float = 2.0) -> tuple[nx.DiGraph, dict | None, PassResult]:
    """conv / linear -> bcos with the trained weights, biases dropped; on copies of G and weights."""
    G = G.copy()
    weights = {n: dict(s) for n, s in weights.items()} if weights is not None else None
    res = PassResult(name="bcosify")
    for node in order(G):
        d = G.nodes[node]
        if d["op"] not in CONVS + ("linear",):
            continue
        w = None
        if weights is not None:
            w = weights[node][weight_keys(G, node)[0]]
        if d["op"] == "linear":
            attrs = dict(out=d["attrs"].out, k=1, b=b)
            if w is not None:
                w = w.reshape(*w.shape, *([1] * max(len(input_shapes(G, node)[0]) - 1, 1)))
        else:
            g = conv_geometry(G, node)
            if any(r != 1 for r in g.dilation):
                res.decline(node, "a dilated conv: the B-cos layer has no dilation")
                continue
            if any(lo != hi for lo, hi in g.pads):
                res.decline(node, "asymmetric padding: the B-cos layer pads both sides alike")
                continue
            attrs = dict(out=g.out, k=g.k, b=b, stride=g.stride, padding=tuple(lo for lo, _ in g.pads),
                         groups=g.groups)
        was = d["op"]
        set_op(G, node, "bcos", attrs)
        if weights is not None:
            weights[node] = {"weight": w}
        res.changed.append(f"{node}: {was} -> bcos(b = {b:g}) (weight kept, bias dropped)")
    return G, weights, res
