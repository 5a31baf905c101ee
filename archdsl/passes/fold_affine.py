"""fold_affine: a per-channel or constant scale right after a conv / linear becomes part of its weights.

    conv(x) >> layerscale(gamma)  -> conv'(x)    W' = gamma W, b' = gamma b
    conv(x) >> resscale(gamma)    -> conv'(x)    W' = gamma W, b' = gamma b
    conv(x) >> scale(v)           -> conv'(x)    W' = v W,     b' = v b

Exact (a product of the same numbers, rounded once) when the conv / linear is the scale's input and nothing
else reads the conv's output. A conv without bias stays without bias.
"""
from __future__ import annotations

import torch

from archdsl.ir.graph import inputs, order
from archdsl.ops.conv_algebra import scale_out
from archdsl.passes.result import PassResult
from archdsl.passes.rewrite import bypass, precision_blocker, sole_consumer, users_text
from archdsl.passes.weights import LINEAR_OPS, float_like, get_wb, set_wb

# op -> its per-output-channel factor (a (C,) tensor or a number), from (attrs, state)
SCALES = {
    "layerscale": lambda a, state: state["gamma"].double(),
    "resscale": lambda a, state: state["gamma"].double(),
    "scale": lambda a, state: a.value,
}


def fold_affine(G, weights) -> PassResult:
    """conv / linear >> layerscale | resscale | scale -> conv / linear with scaled weights."""
    res = PassResult()
    for node in order(G):
        d = G.nodes[node]
        if d["op"] not in SCALES:
            continue
        src = inputs(G, node)[0]
        op = G.nodes[src]["op"]
        if op not in LINEAR_OPS:
            res.decline(node, f"its input '{src}' is {op}, not a conv / linear")
            continue
        if sole_consumer(G, src) != node:
            res.decline(node, f"'{src}' is also read by {users_text(G, src)}")
            continue
        if precision_blocker(G, src, node, scales_outputs=True):
            res.decline(node, precision_blocker(G, src, node, scales_outputs=True))
            continue
        if weights is not None:
            w, b = get_wb(G, weights, src)
            factor = SCALES[d["op"]](d["attrs"], weights.pop(node, {}))
            s = factor if torch.is_tensor(factor) else torch.full((w.shape[0],), float(factor), dtype=torch.float64)
            w2, b2 = scale_out(w, b, s)
            set_wb(G, weights, src, w2, b2 if b is not None else None, float_like(weights[src]))
        bypass(G, node)
        res.changed.append(f"{node}: {op} '{src}' >> {d['op']} -> {op} (scaled weights)")
    return res
