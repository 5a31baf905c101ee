"""fold_grn_bias: GRN's bias moves into the linear layer that reads it, as UniRepLKNet's deploy form does.

    grn(x) >> linear(W, b)  ->  grn(x, bias = false) >> linear(W, b + W beta)

Exact: the linear layer maps the constant beta to W beta at every position. Applies when the linear layer is
GRN's only reader, at the same precision; a linear layer without bias gets one.
"""
from __future__ import annotations

from archdsl.ir.graph import order
from archdsl.passes.result import PassResult
from archdsl.passes.weights import float_like, get_wb, set_wb
from archdsl.passes.rewrite import precision_blocker, set_op, sole_consumer, users_text


def fold_grn_bias(G, weights) -> PassResult:
    """grn >> linear -> grn(bias = false) >> linear with GRN's beta in its bias."""
    res = PassResult()
    for node in order(G):
        d = G.nodes[node]
        if d["op"] != "grn" or not d["attrs"].bias:
            continue
        user = sole_consumer(G, node)
        if user is None or G.nodes[user]["op"] != "linear":
            what = f"'{user}' is {G.nodes[user]['op']}" if user else f"it is read by {users_text(G, node) or 'the output'}"
            res.decline(node, f"{what}, not one linear layer")
            continue
        if precision_blocker(G, node, user):
            res.decline(node, precision_blocker(G, node, user))
            continue
        if weights is not None:
            beta = weights[node].pop("beta").double()
            w, b = get_wb(G, weights, user)
            like = float_like(weights[user])
            bias = w @ beta + (b if b is not None else 0.0)
        set_op(G, node, "grn", {**d["attrs"], "bias": False})
        set_op(G, user, "linear", {**G.nodes[user]["attrs"], "bias": True})
        if weights is not None:
            set_wb(G, weights, user, w, bias, like)
        res.changed.append(f"{node}: grn >> linear '{user}' -> grn(bias = false) >> linear (bias + W beta)")
    return res
