"""A stable text dump of the IR (golden tests, debugging, `archdsl check --ir`) and its hash."""
from __future__ import annotations

import hashlib

import networkx as nx

from archdsl.ir.graph import inputs, order


def _value(v) -> str:
    if isinstance(v, tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return repr(v)
    return str(v)


def dump(G: nx.DiGraph, spans: bool = False) -> str:
    """One line per node: ``%name = op(%args, attr=value, ...) : [shape] precision  # params macs``."""
    lines = [f"graph {G.graph.get('name', '')}"]
    for node in order(G):
        d = G.nodes[node]
        args = [f"%{a}" for a in inputs(G, node)]
        attrs = [f"{k}={_value(v)}" for k, v in sorted(d["attrs"].items()) if v is not None]
        extra = [f"{d['precision']}"]
        if d["layout"] != "channels_first":
            extra.append(d["layout"])
        if d.get("share"):
            extra.append(f"share={d['share']}")
        cost = f"  # params={d['params']} macs={d['macs']}" if d["params"] or d["macs"] else ""
        where = f"  @ {d['span']}" if spans and d.get("span") else ""
        lines.append(f"%{node} = {d['op']}({', '.join(args + attrs)}) : {_value(tuple(d['shape']))} "
                     f"{' '.join(extra)}{cost}{where}")
    return "\n".join(lines) + "\n"


def ir_hash(G: nx.DiGraph) -> str:
    """Same architecture, same hash: names of the graph and source positions do not count."""
    body = dump(G).split("\n", 1)[1]
    return hashlib.sha256(body.encode()).hexdigest()[:16]
