"""Ops with several results and ops that stand in for a tensor, as the elaborator applies them.

`chunk(3)` / `split([a, b])` (OpSpec.pieces) become one node per piece, and the statement's value is the list
of them: `qkv: linear(3 * dim) >> chunk(3)`, then `$qkv[0]` is q. Applying an op to that list is an error that
says how to pick a piece. `param(...)` (OpSpec.source) passed as an operand, `add(param([c, n]))`, is applied
to the current tensor first and the op receives its result.
"""
from __future__ import annotations

import networkx as nx

from archdsl.errors import ArchError, Span
from archdsl.frontend.values import OpValue
from archdsl.ops.registry import get_op, has_op


class Pieces(tuple):
    """The results of one chunk / split, in order (Tensors)."""

    def label(self) -> str:
        return "[" + ", ".join(f"${t.node}" for t in self) + "]"


def need_tensor(current, span: Span, what: str = "this op"):
    """`current` when it is one tensor; a list of pieces cannot flow into an op."""
    if isinstance(current, Pieces):
        raise ArchError(f"{what} receives the {len(current)} pieces of a chunk / split, not one tensor", span,
                        hint="label the split (`qkv: ... >> chunk(3)`) and pick a piece: `$qkv[0]`")
    return current


def materialize_operands(elab, value: OpValue, current, ctx, span) -> OpValue:
    """`value` with every source-op argument (`param([c, n])`) replaced by its result on `current`."""
    if not any(_is_source(a) for a in value.args):
        return value
    args = tuple(elab._op(a, current, ctx, a.span or span, None) if _is_source(a) else a for a in value.args)
    return OpValue(value.name, args, value.kwargs, value.span)


def _is_source(v) -> bool:
    return isinstance(v, OpValue) and has_op(v.name) and get_op(v.name).source


def make_pieces(elab, spec, value: OpValue, current, count: int, ctx, span, hint) -> Pieces:
    """One node per piece of a chunk / split, each with its `piece` attribute."""
    return Pieces(elab._op(OpValue(value.name, value.args, {**value.kwargs, "piece": i}, value.span), current, ctx,
                           span, hint) for i in range(count))


def prune_unused_pieces(G: nx.DiGraph) -> None:
    """A chunk's pieces that nothing reads are dropped (`q, k, v` where only q and v are used)."""
    for node in [n for n, d in G.nodes(data=True) if _is_piece(d) and G.out_degree(n) == 0]:
        G.remove_node(node)


def _is_piece(d) -> bool:
    return d["op"] not in ("input", "output") and get_op(d["op"]).pieces is not None

