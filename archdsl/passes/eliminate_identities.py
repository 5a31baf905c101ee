"""eliminate_identities: drop what is the identity at inference, then nodes whose result nothing reads.

Runs first, so a dropout between a conv and its BatchNorm does not hide the fold.
"""
from __future__ import annotations

from archdsl.ir.graph import order
from archdsl.passes.result import PassResult
from archdsl.passes.rewrite import bypass, prune_dead

# op -> when the node is the identity at inference (from its attrs)
IDENTITY_AT_INFERENCE = {
    "identity": lambda a: True,             # identity(x) -> x
    "dropout": lambda a: True,              # dropout(x, p) -> x        (eval)
    "droppath": lambda a: True,             # droppath(x, p) -> x       (eval)
    "scale": lambda a: a.value == 1.0,      # scale(x, 1) -> x
}


def eliminate_identities(G, weights) -> PassResult:
    """identity, dropout, droppath, scale(1) -> their input; then dead nodes."""
    res = PassResult()
    for node in order(G):
        d = G.nodes[node]
        rule = IDENTITY_AT_INFERENCE.get(d["op"])
        if rule is None or not rule(d["attrs"]):
            continue
        src = bypass(G, node)
        if weights is not None:
            weights.pop(node, None)
        res.changed.append(f"{node}: {d['op']}(x) -> x ('{src}')")
    for node in prune_dead(G):
        if weights is not None:
            weights.pop(node, None)
        res.changed.append(f"{node}: dead (its result is never used) -> removed")
    return res
