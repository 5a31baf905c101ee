"""Emitted files for the Triton backend: the deploy module's readable source (codegen/python_source.py), whose
fused groups are swapped at construction for archdsl's Triton kernels, as ``archdsl.compile(...,
backend="triton")`` does in memory (codegen/triton/lower.py ``lower_module``). The kernels are not copied: the
file imports archdsl's runtime package ``codegen.triton`` and says so at the top.

Each group is listed as data (its members' ops, attributes and extra inputs, its input shapes, layout and
precision: repr'd literals), and planned again when the module is built, so the file holds no generated
kernel text. A group the planner cannot lower stays the readable torch class it is.
"""
from __future__ import annotations

import networkx as nx

from archdsl.ir.graph import inputs
from codegen.emit_exprs import ident, literal

NOTE = ("Fused groups run as Triton kernels from archdsl's runtime package codegen.triton (imported below: "
        "archdsl installed, and a GPU or TRITON_INTERPRET=1).")

RUNTIME = '''

# The Triton backend: archdsl's runtime package plans each group below into its Triton kernels.
from codegen.triton.lower import TritonGroup, lower_group  # noqa: E402

# (group, members as (op, attributes, extra group inputs, name), input shapes, layout, precision)
TRITON_GROUPS = [
{groups}
]


def use_triton(model):
    """Swap each listed fused group for its Triton kernels; the group's member modules keep their weights."""
    for name, members, shapes, layout, precision in TRITON_GROUPS:
        parent, _, leaf = name.rpartition(".")
        holder = model.get_submodule(parent)
        group = lower_group(members, shapes, layout=layout, precision=precision, name=name, split=True)
        setattr(holder, leaf, TritonGroup(group, dict(getattr(holder, leaf).named_children())))
    return model


class {cls}Triton({cls}):
    def __init__(self):
        super().__init__()
        use_triton(self)


Model = {cls}Triton
'''


def triton_groups(G: nx.DiGraph) -> list[str]:
    """One literal line per fused group the Triton planner lowers (a group it declines stays in torch)."""
    from archdsl.ops.fused import chain
    from codegen.triton.lower import NotLowerable, lower_fused_node

    lines = []
    for node, d in G.nodes(data=True):
        if d["op"] != "fused":
            continue
        try:
            lower_fused_node(G, node)
        except NotLowerable:
            continue
        members = [(op, attrs, extra, ident(name)) for op, attrs, extra, name in chain(d["attrs"])]
        shapes = [tuple(G.nodes[a]["shape"]) for a in inputs(G, node)]
        row = (".".join(map(ident, node.split("."))), members, shapes, d.get("layout", "channels_first"),
               d.get("precision", "fp32"))
        lines.append(f"    {literal(row)},")
    return lines


def runtime_section(G: nx.DiGraph, cls: str) -> str:
    return RUNTIME.replace("{groups}", "\n".join(triton_groups(G))).replace("{cls}", ident(cls))
