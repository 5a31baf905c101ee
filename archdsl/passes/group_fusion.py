"""group_fusion: maximal producer -> consumer chains become `fused` nodes, each run as one call.

A group is a chain of fusable ops (``OpSpec.fusable``: conv / linear / norm with their bias, activations, BN
left over, layer and residual scales, residual adds, gating muls) in which every member reads the one before it and is its only
reader; add / mul take their other operands as extra group inputs. Whole blocks become one group: the
ConvNeXt block dwconv >> ln >> linear >> gelu >> linear >> add is one chain, which a backend may split into
kernels (codegen/triton plans a group's stages). A group ends where the next op cannot continue it; the fused
node says why (`boundary`), and groups of one op stay as they are (their reason is in `declined`).

    conv >> act >> conv >> act >> conv >> add(., r) >> act  -> fused(...)     a ResNet bottleneck
    norm >> linear >> act >> linear >> add(., r)             -> fused(...)     a MetaFormer MLP branch
    add(chain_a, chain_b)                                    -> the longer chain continues; the other ends
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from archdsl.ir.graph import inputs, order
from archdsl.ir.modules import module_for, spec_of
from archdsl.ops.fused import class_ref
from archdsl.ops.registry import get_op
from archdsl.passes.result import PassResult
from archdsl.passes.rewrite import sole_consumer, users_text, uses

@dataclass
class Group:
    members: list = field(default_factory=list)
    boundary: str | None = None


def _fusable(G, node) -> bool:
    """Registered as fusable (OpSpec.fusable) and lowered to a module class FusedGroup can build."""
    spec = spec_of(G, node)
    return spec is not None and spec.fusable and class_ref(module_for(G, node)[0]) is not None


def _same_kind(G, a, b) -> bool:
    da, db = G.nodes[a], G.nodes[b]
    return (da["precision"], da["layout"], da.get("dtype")) == (db["precision"], db["layout"], db.get("dtype"))


def _boundary(G, last) -> str:
    """Why the group ending at `last` takes nothing more."""
    readers = list(G.successors(last))
    if any(G.nodes[r]["op"] == "output" for r in readers):
        return "its result is the graph output"
    if uses(G, last) > 1:
        return f"its result is read {uses(G, last)} times ({users_text(G, last)})"
    reader = readers[0]
    if not _fusable(G, reader):
        return f"its reader '{reader}' ({G.nodes[reader]['op']}) is not fusable"
    return f"precision, layout or dtype changes at '{reader}'"


def _form_groups(G) -> list[Group]:
    rank = {n: i for i, n in enumerate(order(G))}
    group_of: dict[str, Group] = {}
    for node in rank:
        if not _fusable(G, node):
            continue
        open_ = [group_of[p] for p in dict.fromkeys(inputs(G, node))
                 if p in group_of and group_of[p].members[-1] == p and sole_consumer(G, p) == node
                 and _same_kind(G, p, node)]
        if not open_:
            group_of[node] = Group([node])
            continue
        chain = max(open_, key=lambda g: len(g.members))  # the longest; the first of equals
        for g in open_:
            if g is not chain:
                g.boundary = (f"its reader '{node}' ({G.nodes[node]['op']}) continues the chain of "
                              f"'{chain.members[-1]}' (a group is a chain)")
        chain.members.append(node)
        group_of[node] = chain
    groups = list({id(g): g for g in group_of.values()}.values())
    for g in groups:
        g.boundary = g.boundary or _boundary(G, g.members[-1])
    return sorted(groups, key=lambda g: rank[g.members[-1]])


def _scope(names) -> list[str]:
    parts = [n.split(".")[:-1] for n in names]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return common


def _taken(local, out) -> bool:
    """A member name must be new and clash with neither a module attribute nor a group input (in0, in1, ...)."""
    return local in out or hasattr(nn.Module, local) or local == "steps" or (local[:2] == "in" and local[2:].isdigit())


def _local_names(members, scope) -> list[str]:
    """Submodule names of the members: their node names below the group's scope, dots as underscores."""
    out = []
    for m in members:
        local = "_".join(m.split(".")[len(scope):])
        while _taken(local, out):
            local += "_"
        out.append(local)
    return out


def _fused_node(G, g: Group, taken: set) -> tuple[str, dict, list, list]:
    """(name, node data, external inputs, local names) of a group's fused node."""
    scope = _scope(g.members)
    name = ".".join(scope + ["fused"])
    base, i = name, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    locals_ = _local_names(g.members, scope)
    local = dict(zip(g.members, locals_))
    ext: list[str] = []
    args = []
    for m in g.members:
        refs = []
        for a in inputs(G, m):
            if a in local:
                refs.append(local[a])
            else:
                if a not in ext:
                    ext.append(a)
                refs.append(f"in{ext.index(a)}")
        args.append(tuple(refs))
    attrs = dict(ops=tuple(G.nodes[m]["op"] for m in g.members), names=tuple(locals_), args=tuple(args),
                 member_attrs=tuple(tuple((k, v) for k, v in G.nodes[m]["attrs"].items() if v is not None)
                                    for m in g.members),
                 boundary=g.boundary)
    spec = get_op("fused")
    ins = [tuple(G.nodes[x]["shape"]) for x in ext]
    a = spec.bind([], attrs, ins)
    shape = tuple(spec.shape(a, ins))
    first = G.nodes[g.members[0]]
    data = dict(op="fused", attrs=a, shape=shape, dtype=first.get("dtype", "float32"), precision=first["precision"],
                layout=first["layout"], span=first.get("span"), params=int(spec.params(a, ins)),
                macs=int(spec.macs(a, ins, shape)))
    return name, data, ext, locals_


def _rebuild(G, fused: list[tuple[Group, str, dict, list]]) -> None:
    """Replace each group by its fused node, at the place of the group's last member (stable dumps)."""
    nodes = order(G)
    data = {n: G.nodes[n] for n in nodes}
    edges = list(G.edges(data=True))
    rename = {m: name for g, name, _, _ in fused for m in g.members}
    at_last = {g.members[-1]: (name, d) for g, name, d, _ in fused}
    G.remove_nodes_from(nodes)
    for n in nodes:
        if n in at_last:
            G.add_node(at_last[n][0], **at_last[n][1])
        elif n not in rename:
            G.add_node(n, **data[n])
    for u, v, d in edges:
        if v in rename:
            continue  # inputs of a group are wired below, by position
        G.add_edge(rename.get(u, u), v, args=d["args"])
    for _, name, _, ext in fused:
        for i, x in enumerate(ext):
            G.add_edge(rename.get(x, x), name, args=(i,))


def group_fusion(G, weights) -> PassResult:
    """Maximal single-reader chains of conv / linear / norm / elementwise ops -> fused nodes."""
    res = PassResult()
    # a fused node's name must be neither a node nor a scope holding nodes (a label `fused:` makes the scope
    # `fused`, whose members would otherwise be looked up inside the fused module)
    taken = set(G) | {".".join(n.split(".")[:i]) for n in G for i in range(1, n.count(".") + 1)}
    fused = []
    for g in _form_groups(G):
        if len(g.members) == 1:
            res.decline(g.members[0], f"not fused: {g.boundary}")
            continue
        name, d, ext, locals_ = _fused_node(G, g, taken)
        fused.append((g, name, d, ext))
        if weights is not None:
            weights[name] = {f"{loc}.{key}": t for m, loc in zip(g.members, locals_)
                             for key, t in weights.pop(m, {}).items()}
        res.changed.append(f"{name}: fused {' >> '.join(d['attrs'].ops)} (ends: {g.boundary})")
    _rebuild(G, fused)
    return res
