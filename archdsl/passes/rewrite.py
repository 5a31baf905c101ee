"""Graph edits the passes are written in: redirect uses, bypass a node, retype a node, drop dead nodes.

Each keeps the IR's invariants (argument positions on edges, recomputed shape / params / MACs from the op
registry), so the verifier run after every pass checks the pass, not the bookkeeping.
"""
from __future__ import annotations

import networkx as nx

from archdsl.errors import ArchError
from archdsl.ir.graph import inputs
from archdsl.ops.registry import get_op

STRUCTURAL = ("input", "output")
QUANTIZED = ("int8", "fp8", "fp8_e4m3", "fp8_e5m2")  # precisions trained with fake quantization / rounding


def precision_blocker(G: nx.DiGraph, *nodes: str, scales_outputs: bool = False) -> str | None:
    """Why these nodes cannot become one (None: they can). Different precisions cannot share weights; in an
    int8 / fp8 region each node quantized its own input and weights while training, and a merged node would
    drop or move those rounding points, so deploy would no longer compute what the model trained as.

    `scales_outputs`: the merge multiplies each output channel of an int8 conv / linear by a factor (conv >>
    bn, conv >> layerscale). Per-channel symmetric weight quantization commutes with that (the channel's
    scale is max|w| / 127, scaled by the same factor), so only the second node's input observer is dropped:
    one quantization step, as PyTorch's own conv-bn fusion for int8 does."""
    precisions = {G.nodes[n]["precision"] for n in nodes}
    if len(precisions) > 1:
        return "their precisions differ (" + ", ".join(f"'{n}' {G.nodes[n]['precision']}" for n in nodes) + ")"
    (p,) = precisions
    if p in QUANTIZED and not (scales_outputs and p == "int8"):
        return f"it is in an {p} region: merging would move the quantization points it was trained with"
    return None


def uses(G: nx.DiGraph, node: str) -> int:
    """How many argument slots read the node's result (``add(x, x)`` reads x twice)."""
    return sum(len(d["args"]) for _, _, d in G.out_edges(node, data=True))


def sole_consumer(G: nx.DiGraph, node: str) -> str | None:
    """The one node that reads `node`'s result once, or None when it is read more than once or by the output."""
    succ = list(G.successors(node))
    if len(succ) != 1 or uses(G, node) != 1 or G.nodes[succ[0]]["op"] == "output":
        return None
    return succ[0]


def users_text(G: nx.DiGraph, node: str) -> str:
    return ", ".join(f"'{c}'" for c in G.successors(node))


def redirect(G: nx.DiGraph, old: str, new: str, only: str | None = None) -> None:
    """Every use of `old`'s result (or only `only`'s uses of it) becomes a use of `new`'s, at the same argument
    positions."""
    for _, consumer, data in list(G.out_edges(old, data=True)):
        if only is not None and consumer != only:
            continue
        G.remove_edge(old, consumer)
        if G.has_edge(new, consumer):
            G.edges[new, consumer]["args"] = tuple(sorted(G.edges[new, consumer]["args"] + data["args"]))
        else:
            G.add_edge(new, consumer, args=data["args"])


def bypass(G: nx.DiGraph, node: str) -> str:
    """``f(x) -> x``: uses of the node read its (first) input instead; the node goes. Returns the input."""
    src = inputs(G, node)[0]
    redirect(G, node, src)
    G.remove_node(node)
    return src


def set_op(G: nx.DiGraph, node: str, op: str, attrs: dict) -> None:
    """Turn a node into ``op(attrs)`` on its current inputs; shape, params and MACs come from the registry."""
    spec = get_op(op)
    ins = [tuple(G.nodes[a]["shape"]) for a in inputs(G, node)]
    d = G.nodes[node]
    try:
        a = spec.bind([], {k: v for k, v in attrs.items() if v is not None}, ins)
        shape = tuple(spec.shape(a, ins))
    except ArchError as e:
        raise ArchError(f"internal: rewriting '{node}' as {op}: {e.message}", d.get("span")) from None
    d.update(op=spec.name, attrs=a, shape=shape, params=int(spec.params(a, ins)), macs=int(spec.macs(a, ins, shape)))
    d.pop("share", None)  # a rewritten node ties nothing any more (e.g. DCLS positions, now folded)
    d.pop("shared_params", None)


def prune_dead(G: nx.DiGraph) -> list[str]:
    """Remove nodes whose result nothing reads (and then what only they read); returns their names."""
    gone = []
    stack = [n for n in G if G.out_degree(n) == 0 and G.nodes[n]["op"] not in STRUCTURAL]
    while stack:
        node = stack.pop()
        if node not in G or G.out_degree(node) or G.nodes[node]["op"] in STRUCTURAL:
            continue
        preds = list(G.predecessors(node))
        G.remove_node(node)
        gone.append(node)
        stack.extend(preds)
    return gone
