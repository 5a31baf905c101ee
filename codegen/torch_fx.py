"""Lower the IR to a torch.fx GraphModule (codegen/compiled.py makes it a compiled model, codegen/deploy.py its
deploy form).

Ops with parameters (and every op without a plain-function lowering) become submodules at their IR name
(``stage2.block3.mixer``), so ``state_dict`` keys follow the hierarchy; merges become ``x + y`` / ``torch.cat``.
"""
from __future__ import annotations

import operator

import networkx as nx
import torch
from torch import fx, nn

from archdsl.ir.graph import inputs, order, shared_with
from archdsl.ir.modules import module_for
from archdsl.ops.registry import get_op


def as_function(G: nx.DiGraph, node: str) -> bool:
    """Whether a node lowers to a plain function call (add, mul, concat) rather than a submodule. An int8 add
    in a train graph is a module: it trains with an observer on its arguments (archdsl.quant.Precision), so
    deploy knows the range a quantized add reads them in."""
    d = G.nodes[node]
    if get_op(d["op"]).function is None:
        return False
    return not (d["op"] == "add" and d["precision"] == "int8" and not G.graph.get("precision_lowered"))


def build_modules(G: nx.DiGraph) -> dict[str, nn.Module]:
    mods = {}
    for node in order(G):
        d = G.nodes[node]
        if d["op"] in ("input", "output") or as_function(G, node):
            continue
        cls, kwargs = module_for(G, node)
        mods[node] = with_dtype(cls(**kwargs), d) if G.graph.get("precision_lowered") else \
            with_precision(cls(**kwargs), d["precision"], G.graph.get("act_levels", 255))
    tie_shared(G, mods)
    return mods


def with_precision(mod: nn.Module, precision: str, levels: int = 255) -> nn.Module:
    """fp32 modules stay as they are; others run inside archdsl.quant.Precision (int8 QAT, fp8 rounding,
    bf16/fp16 autocast), their parameters one level down (`node.op.weight`)."""
    if precision == "fp32":
        return mod
    from archdsl.quant import Precision

    return Precision(mod, precision, levels)


def with_dtype(mod: nn.Module, d: dict) -> nn.Module:
    """A deploy node after lower_precision: bf16 / fp16 nodes hold their weights in that dtype; int8 and fp8
    are explicit in the graph (int8 kernels, quantize nodes, weights stored quantized)."""
    from archdsl.quant import LOW_FLOAT_DTYPES

    return mod.to(LOW_FLOAT_DTYPES[d["dtype"]]) if d.get("dtype") in LOW_FLOAT_DTYPES else mod


def tie_shared(G: nx.DiGraph, mods: dict) -> None:
    """Nodes in one `share` group use the first member's shareable parameters (e.g. DCLS positions)."""
    for node, first in shared_with(G).items():
        mod, src = _op_module(mods[node]), _op_module(mods[first])
        for pname in getattr(type(mod), "_shareable", ()):
            setattr(mod, pname, getattr(src, pname))


def _op_module(mod: nn.Module) -> nn.Module:
    """The op's own module inside a precision wrapper (archdsl.quant.Precision keeps it as `.op`)."""
    from archdsl.quant import Precision

    return mod.op if isinstance(mod, Precision) else mod


def _hierarchy(mods: dict[str, nn.Module]) -> nn.Module:
    """A root module holding `mods` at their dotted names, containers created in forward order (so
    `print(model)` and `state_dict()` read in the order the network runs)."""
    root = nn.Module()
    for name, mod in mods.items():
        parent = root
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(leaf, mod)
    return root


def build_graph(G: nx.DiGraph) -> fx.Graph:
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    for node in order(G):
        d = G.nodes[node]
        args = [env[a] for a in inputs(G, node)]
        if d["op"] == "input":
            env[node] = graph.placeholder(node)
        elif d["op"] == "output":
            graph.output(args[0])
        elif not as_function(G, node):
            env[node] = graph.call_module(node, tuple(args))
        elif d["op"] == "concat":
            env[node] = graph.call_function(torch.cat, (args,), {"dim": 1 + d["attrs"].get("axis", 0) % len(d["shape"])})
        elif d["op"] in ("add", "mul"):
            fn = operator.add if d["op"] == "add" else operator.mul
            out = args[0]
            for a in args[1:] + ([d["attrs"]["value"]] if d["attrs"].get("value") is not None else []):
                out = graph.call_function(fn, (out, a))
            env[node] = out
        else:
            env[node] = graph.call_module(node, tuple(args))
    graph.lint()
    return graph


def lower(G: nx.DiGraph, cls: type = fx.GraphModule) -> fx.GraphModule:
    """The IR as a `cls` (a GraphModule) with freshly initialised weights; it keeps its IR as ``archdsl_ir``
    (emit, deploy and reports read it)."""
    from archdsl.ir.memory import check

    check(G)  # before allocating: `linear(1000000000000)` is an error at its line, not an out-of-memory crash
    gm = cls(_hierarchy(build_modules(G)), build_graph(G), class_name=G.graph.get("name") or "Model")
    gm.archdsl_ir = G
    return gm
