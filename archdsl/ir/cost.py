"""Parameter / MAC summaries per block: the tables `archdsl check` prints."""
from __future__ import annotations

import networkx as nx

from archdsl.ir.graph import order, shared_duplicates, shared_with, totals


def block_table(G: nx.DiGraph, depth: int = 1) -> list[dict]:
    """Rows ``{name, ops, params, macs, shape}`` grouping nodes by the first `depth` parts of their name,
    in graph order; the shape is the output of the group's last node."""
    rows: dict[str, dict] = {}
    for node in order(G):
        d = G.nodes[node]
        if d["op"] in ("input", "output"):
            continue
        key = ".".join(node.split(".")[:depth])
        row = rows.setdefault(key, {"name": key, "ops": 0, "params": 0, "macs": 0, "shape": None})
        row["ops"] += 1
        row["params"] += d["params"]
        row["macs"] += d["macs"]
        row["shape"] = list(d["shape"])
    return list(rows.values())


def size_bytes(G: nx.DiGraph) -> int:
    """Bytes of the parameters at each node's precision (fp32 4, bf16/fp16 2, int8/fp8 1); parameters tied
    in a share group are counted once."""
    from archdsl.quant import BYTES

    total = sum(d["params"] * BYTES[d["precision"]] for _, d in G.nodes(data=True))
    for node in shared_with(G):
        total -= G.nodes[node].get("shared_params", 0) * BYTES[G.nodes[node]["precision"]]
    return total


def summary(G: nx.DiGraph) -> dict:
    t = totals(G)
    return {
        "model": G.graph.get("name"),
        "params": t["params"],
        "macs": t["macs"],
        "input_shape": list(G.nodes[G.graph["input"]]["shape"]),
        "output_shape": list(G.nodes[G.graph["output"]]["shape"]),
        "nodes": G.number_of_nodes() - 2,
        "size_bytes": size_bytes(G),
        "shared_params_counted_once": shared_duplicates(G),
    }
