"""How much memory a model needs, checked before anything is allocated.

`check` passes `linear(1000000000000)`: the IR only counts its 5e12 parameters. Allocating them would kill the
process (or the machine), so every module build (codegen.torch_fx.to_graph_module) and every forward pass the
CLI runs first compares an estimate against a limit and refuses with the line of the largest node.

The estimate: 4 bytes per parameter (modules are built in float32) and, for a forward pass at batch B, the
two largest activations (B x numel x 4 bytes each: an op's input and output are alive together). The limit is
the machine's physical memory, or ARCHDSL_MAX_MEMORY (bytes, or with a k/M/G/T suffix: `ARCHDSL_MAX_MEMORY=200G`).
"""
from __future__ import annotations

import math
import os

import networkx as nx

from archdsl.errors import ArchError

BYTES = 4  # float32
_SUFFIX = {"k": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def limit() -> int:
    raw = os.environ.get("ARCHDSL_MAX_MEMORY", "").strip()
    if raw:
        scale = _SUFFIX.get(raw[-1], 1)
        digits = raw[:-1] if raw[-1] in _SUFFIX else raw
        try:
            return int(float(digits) * scale)
        except ValueError:
            raise ArchError(f"ARCHDSL_MAX_MEMORY={raw!r} is not a size",
                            hint="bytes, or a number with k, M, G or T: ARCHDSL_MAX_MEMORY=64G") from None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 64 * 2**30


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def check(G: nx.DiGraph, batch: int = 0, what: str = "build the model") -> None:
    """Refuse (ArchError at the largest node) when parameters, plus activations at `batch`, exceed the limit."""
    nodes = [(n, d) for n, d in G.nodes(data=True) if d["op"] not in ("input", "output")] or list(G.nodes(data=True))
    params = sum(d.get("params", 0) for _, d in nodes) * BYTES
    acts = sorted((math.prod(d["shape"]) * BYTES * batch, n) for n, d in G.nodes(data=True))[-2:]
    total = params + sum(a for a, _ in acts)
    cap = limit()
    if total <= cap:
        return
    heaviest = max(nodes, key=lambda nd: nd[1].get("params", 0))
    biggest_act = acts[-1] if acts else (0, heaviest[0])
    node = heaviest[0] if heaviest[1].get("params", 0) * BYTES >= biggest_act[0] else biggest_act[1]
    d = G.nodes[node]
    detail = (f"{d.get('params', 0):,} parameters" if node == heaviest[0] and d.get("params", 0)
              else f"an output of {math.prod(d['shape']):,} values per sample")
    raise ArchError(f"cannot {what}: it needs about {_human(total)} ({_human(params)} of parameters"
                    + (f", {_human(total - params)} of activations at batch {batch}" if batch else "")
                    + f"), more than the {_human(cap)} allowed; the largest part is '{node}' ({d['op']}, {detail})",
                    d.get("span"),
                    hint="make it smaller, or raise the limit with ARCHDSL_MAX_MEMORY (e.g. ARCHDSL_MAX_MEMORY=512G)")
