"""cse: common-subexpression elimination.

    f(x, ...) ... f(x, ...) -> f(x, ...)    same op, attrs, inputs, precision and layout; f holds no state

Only ops without parameters or buffers merge (two convs of x with equal attrs are different convs), and
only deterministic ones (dropout is gone by now; a random op would hold its generator as state).
"""
from __future__ import annotations

from archdsl.ir.graph import inputs, order
from archdsl.ir.modules import meta_module
from archdsl.passes.result import PassResult
from archdsl.passes.rewrite import STRUCTURAL, redirect

COMMUTATIVE = ("add", "mul")  # a + b == b + a exactly in IEEE arithmetic (two operands)
RANDOM = ("dropout", "droppath")


def _stateless(G, node) -> bool:
    if G.nodes[node]["params"]:
        return False
    try:
        module = meta_module(G, node)
    except (NotImplementedError, RuntimeError):
        return False
    return not module.state_dict()


def _key(G, node):
    d = G.nodes[node]
    args = inputs(G, node)
    if d["op"] in COMMUTATIVE and len(args) == 2:
        args = sorted(args)
    # an attribute left at None (add's value) is the same as one a pass never set
    attrs = tuple(sorted((k, repr(v)) for k, v in d["attrs"].items() if v is not None))
    return d["op"], attrs, tuple(args), d["precision"], d["layout"], d.get("dtype"), d.get("act_qparams")


def cse(G, weights) -> PassResult:
    """Nodes computing the same stateless function of the same inputs -> the first of them."""
    res = PassResult()
    seen: dict = {}
    for node in order(G):
        d = G.nodes[node]
        if d["op"] in STRUCTURAL or d["op"] in RANDOM or not _stateless(G, node):
            continue
        key = _key(G, node)
        if key not in seen:
            seen[key] = node
            continue
        redirect(G, node, seen[key])
        G.remove_node(node)
        if weights is not None:
            weights.pop(node, None)
        res.changed.append(f"{node}: same as '{seen[key]}' -> removed")
    return res
