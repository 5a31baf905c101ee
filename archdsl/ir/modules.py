"""What an IR node is as a torch module: its class and arguments, its state keys and shapes, its conv geometry.

These are questions about the IR answered by the op registry, so the passes (which rewrite a node's tensors)
and the backends (which build the modules) ask them here. Modules built only to learn their state keys live on
the meta device: no memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import torch

from archdsl.ir.graph import inputs
from archdsl.ops.conv import as_conv, conv_facts
from archdsl.ops.registry import OpSpec, get_op
from archdsl.ops.shapes import resolve_padding


def input_shapes(G: nx.DiGraph, node: str) -> list[tuple]:
    return [tuple(G.nodes[a]["shape"]) for a in inputs(G, node)]


def spec_of(G: nx.DiGraph, node: str) -> OpSpec | None:
    """The registration of the node's op; None for the graph's input and output nodes."""
    op = G.nodes[node]["op"]
    return None if op in ("input", "output") else get_op(op)


def module_for(G: nx.DiGraph, node: str) -> tuple[type, dict]:
    """(class, literal kwargs) of a node's torch module, from its registry entry."""
    d = G.nodes[node]
    return get_op(d["op"]).torch(d["attrs"], input_shapes(G, node))


def meta_module(G: nx.DiGraph, node: str) -> torch.nn.Module:
    """The node's torch module on the meta device (its structure and state keys, no memory)."""
    cls, kwargs = module_for(G, node)
    with torch.device("meta"):
        return cls(**kwargs)


def state_shapes(G: nx.DiGraph, node: str) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in meta_module(G, node).state_dict().items()}


def weight_keys(G: nx.DiGraph, node: str) -> tuple[str, str | None]:
    """The state keys of a conv / linear node's weight and bias (``weight`` or ``conv.weight`` for a conv with
    asymmetric padding); the bias key is None when the node has no bias."""
    keys = state_shapes(G, node)
    wkey = next(k for k in keys if k == "weight" or k.endswith(".weight"))
    bkey = wkey[: -len("weight")] + "bias"
    return wkey, (bkey if bkey in keys else None)


@dataclass(frozen=True)
class ConvGeometry:
    """A conv-like node as a plain convolution: channels, groups, kernel, stride, (lo, hi) pads, dilation."""

    cin: int
    out: int
    groups: int
    k: tuple
    stride: tuple
    pads: tuple
    dilation: tuple

    @property
    def extent(self) -> tuple:
        """The dense kernel a dilated one spans: r*(k-1)+1 per dim."""
        return tuple(r * (k - 1) + 1 for k, r in zip(self.k, self.dilation))

    @property
    def padding_free(self) -> bool:
        return all(lo == 0 and hi == 0 for lo, hi in self.pads)


def conv_geometry(G: nx.DiGraph, node: str) -> ConvGeometry:
    """The geometry of a conv / dwconv / pwconv node."""
    d = G.nodes[node]
    ins = input_shapes(G, node)
    a = as_conv(d["op"], d["attrs"], ins)
    cin, out, groups = conv_facts(a, ins)
    pads = resolve_padding(d["op"], a.padding, a.k, a.stride, a.dilation)
    return ConvGeometry(cin, out, groups, tuple(a.k), tuple(a.stride), tuple(pads), tuple(a.dilation))
