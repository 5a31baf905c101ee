"""Draw the IR: graphviz dot text with one cluster per block, rendered to svg/png when `dot` is installed."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import networkx as nx

from archdsl.errors import ArchError
from archdsl.ir.graph import inputs, order
from archdsl.outputs import write


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def collapse(G: nx.DiGraph, depth: int) -> nx.DiGraph:
    """One node per name prefix of `depth` parts (a block drawn as a box); 0 keeps every op."""
    if depth <= 0:
        return G
    H = nx.DiGraph()
    key = {n: ".".join(n.split(".")[:depth]) for n in G}
    for n in order(G):
        d = G.nodes[n]
        k = key[n]
        if k not in H:
            H.add_node(k, op=d["op"] if k == n else "block", shape=d["shape"], params=0)
        H.nodes[k]["shape"] = d["shape"]
        H.nodes[k]["params"] += d["params"]
        for a in inputs(G, n):
            if key[a] != k:
                H.add_edge(key[a], k)
    return H


def to_dot(G: nx.DiGraph, depth: int = 0) -> str:
    H = collapse(G, depth)
    lines = [f"digraph {_quote(G.graph.get('name') or 'model')} {{", "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fillcolor="#eef3fb", fontname="Helvetica", fontsize=10];']
    clusters: dict[str, list[str]] = {}
    for n in H.nodes:
        parent = n.rsplit(".", 1)[0] if "." in n else ""
        clusters.setdefault(parent, []).append(n)
    for parent, members in clusters.items():
        indent = "  "
        if parent:
            lines.append(f"  subgraph {_quote('cluster_' + parent)} {{ label={_quote(parent)}; style=dashed;")
            indent = "    "
        for n in members:
            d = H.nodes[n]
            label = f"{n.rsplit('.', 1)[-1]}\\n{d['op']} {list(d['shape'])}"
            if d.get("params"):
                label += f"\\n{d['params']:,} params"
            lines.append(f"{indent}{_quote(n)} [label={_quote(label)}];")
        if parent:
            lines.append("  }")
    for u, v in H.edges:
        lines.append(f"  {_quote(u)} -> {_quote(v)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(G: nx.DiGraph, out: Path, depth: int = 0) -> str:
    dot = to_dot(G, depth)
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in ("dot", "gv", "svg", "png", "pdf"):
        raise ArchError(f"cannot draw to '{out}'", hint="use a .svg, .png, .pdf or .dot file name")
    if fmt in ("dot", "gv"):
        write(out, dot, "-o")
        return f"wrote {out}"
    exe = shutil.which("dot")
    if exe is None:
        fallback = out.with_suffix(".dot")
        write(fallback, dot, "-o")
        return (f"graphviz is not installed, so wrote the dot text to {fallback} instead "
                f"(install graphviz, e.g. `apt-get install graphviz`, to get {fmt})")
    done = subprocess.run([exe, f"-T{fmt}", "-o", str(out)], input=dot.encode(), capture_output=True)
    if done.returncode != 0:
        raise ArchError(f"graphviz could not write {out}: {done.stderr.decode(errors='replace').strip()}")
    return f"wrote {out}"
