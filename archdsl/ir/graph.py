"""IR construction and queries.

A graph is an ``nx.DiGraph``. Node ids are hierarchical names (``stage2.block3.mixer``), unique and made of
Python identifiers joined by dots, so they double as parameter paths in the emitted module. Each node holds:
``op``, ``attrs`` (validated), ``shape`` (no batch), ``dtype``, ``precision``, ``layout``, ``span`` (where in
the source it came from), ``params`` and ``macs``. An edge ``u -> v`` carries ``args``: the argument
positions of ``v`` that ``u`` fills, so ``add(x, x)`` is one edge with ``args=(0, 1)``.
Graph-level facts live in ``G.graph``: ``name``, ``input`` (node id), ``output`` (node id), ``file``.
"""
from __future__ import annotations

import networkx as nx

from archdsl.errors import ArchError
from archdsl.ops.registry import PRECISIONS, Attrs  # noqa: F401 (PRECISIONS: the IR's precisions, named once)

DEFAULT_PRECISION = "fp32"
LAYOUTS = ("channels_first", "channels_last")


def new_graph(name: str, file: str = "") -> nx.DiGraph:
    return nx.DiGraph(name=name, file=file, input=None, output=None)


def add_op(G: nx.DiGraph, name: str, op: str, args: list[str], *, attrs=None, shape=(), span=None,
           precision=DEFAULT_PRECISION, layout="channels_first", params=0, macs=0, dtype="float32",
           **extra) -> str:
    if name in G:
        raise ArchError(f"internal: node name '{name}' used twice", span)
    G.add_node(name, op=op, attrs=Attrs(attrs or {}), shape=tuple(shape), dtype=dtype, precision=precision,
               layout=layout, span=span, params=int(params), macs=int(macs), **extra)
    for i, src in enumerate(args):
        if G.has_edge(src, name):
            G.edges[src, name]["args"] = G.edges[src, name]["args"] + (i,)
        else:
            G.add_edge(src, name, args=(i,))
    return name


def inputs(G: nx.DiGraph, node: str) -> list[str]:
    """The node's arguments in order."""
    slots = {}
    for src, _, data in G.in_edges(node, data=True):
        for i in data["args"]:
            slots[i] = src
    return [slots[i] for i in range(len(slots))]


def output_node(G: nx.DiGraph) -> str:
    return G.graph["output"]


def order(G: nx.DiGraph) -> list[str]:
    """A deterministic topological order (ties broken by insertion order), so dumps and code are stable."""
    rank = {n: i for i, n in enumerate(G.nodes)}
    return list(nx.lexicographical_topological_sort(G, key=rank.__getitem__))


def totals(G: nx.DiGraph) -> dict:
    params = sum(d["params"] for _, d in G.nodes(data=True)) - shared_duplicates(G)
    macs = sum(d["macs"] for _, d in G.nodes(data=True))
    return {"params": params, "macs": macs}


def shared_with(G: nx.DiGraph) -> dict[str, str]:
    """Node -> the earlier node whose shareable parameters it uses: members of one `share` group (same op,
    e.g. the DCLS positions of a stage's blocks) after the first."""
    first, out = {}, {}
    for node, d in G.nodes(data=True):
        if d.get("share"):
            out_of = first.setdefault((d["share"], d["op"]), node)
            if out_of != node:
                out[node] = out_of
    return out


def shared_duplicates(G: nx.DiGraph) -> int:
    """Parameters counted on several nodes that really are one tensor: each later member of a share group
    counts them again."""
    return sum(G.nodes[n].get("shared_params", 0) for n in shared_with(G))
