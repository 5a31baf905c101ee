"""The IR verifier: run after construction and after every pass; fails naming the node and its source."""
from __future__ import annotations

import keyword

import networkx as nx

from archdsl.errors import ArchError
from archdsl.ir.graph import LAYOUTS, PRECISIONS, inputs

STRUCTURAL = ("input", "output")


def verify(G: nx.DiGraph, recheck_shapes: bool = True) -> None:
    from archdsl.ops.registry import get_op

    def fail(node, msg):
        raise ArchError(f"IR check failed at '{node}': {msg}", G.nodes[node].get("span") if node in G else None)

    if not nx.is_directed_acyclic_graph(G):
        raise ArchError(f"IR check failed: graph '{G.graph.get('name')}' has a cycle")
    for key in ("input", "output"):
        if G.graph.get(key) not in G:
            raise ArchError(f"IR check failed: graph has no {key} node")
    for node, d in G.nodes(data=True):
        parts = node.split(".")
        if not all(p.isidentifier() and not keyword.iskeyword(p) for p in parts):
            fail(node, "node names must be dotted Python identifiers")
        for key in ("op", "attrs", "shape", "precision", "layout", "params", "macs"):
            if key not in d:
                fail(node, f"missing '{key}'")
        if d["precision"] not in PRECISIONS:
            fail(node, f"unknown precision {d['precision']!r}")
        if d["layout"] not in LAYOUTS:
            fail(node, f"unknown layout {d['layout']!r}")
        slots = sorted(i for _, _, e in G.in_edges(node, data=True) for i in e["args"])
        if slots != list(range(len(slots))):
            fail(node, f"argument positions {slots} are not 0..{len(slots) - 1}")
        args = inputs(G, node)  # only after the check: inputs() needs contiguous positions
        if d["op"] == "input":
            if args:
                fail(node, "an input node takes no arguments")
            continue
        if d["op"] == "output":
            if len(args) != 1:
                fail(node, "the output node takes exactly one argument")
            if tuple(G.nodes[args[0]]["shape"]) != tuple(d["shape"]):
                fail(node, "output shape differs from its argument's")
            continue
        if not args:
            fail(node, "op has no inputs")
        if G.out_degree(node) == 0:
            fail(node, "result is never used (dead node)")
        if recheck_shapes:
            spec = get_op(d["op"])
            ins = [tuple(G.nodes[a]["shape"]) for a in args]
            try:
                shape = tuple(spec.shape(d["attrs"], ins))
            except ArchError as e:
                fail(node, e.message)
            if shape != tuple(d["shape"]):
                fail(node, f"stored shape {list(d['shape'])} but the shape rule gives {list(shape)}")
