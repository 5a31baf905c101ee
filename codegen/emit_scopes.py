"""The IR's name hierarchy read as the scopes of an emitted Python file.

Node names are dotted paths (``stage1.block0.convnext_block.ln``); every prefix is a scope, and the emitted
file makes each scope an ``nn.Module`` attribute at that very path, so its ``state_dict`` keys are the in-memory
module's. A scope is *callable* when its nodes read one tensor from outside and one of them is read outside:
then it gets a ``forward`` and its parent calls it (``x = self.stage1(x)``). Any other scope only holds its
children, and its parent's ``forward`` reaches into it (``self.pair.conv(x)``).
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import networkx as nx

from archdsl.ir.graph import inputs, order
from codegen.emit_exprs import ident
from codegen.torch_fx import as_function

FUNCTIONS = ("add", "mul", "concat")  # as_function ops the forward writes as expressions
INDEXED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*?)([0-9]+)$")


@dataclass
class Unit:
    """One step of a forward: a submodule call (`path` relative to the scope) or a merge, producing `out`."""

    path: str
    kind: str  # "module" | "scope" | "add" | "mul" | "concat"
    out: str
    args: list = field(default_factory=list)
    extra: list = field(default_factory=list)  # literal operands of a merge (add / mul by a number; cat's dim)


class Scopes:
    def __init__(self, G: nx.DiGraph):
        self.G = G
        self.pos = {n: i for i, n in enumerate(order(G))}
        self.members: dict[str, list] = defaultdict(list)
        self.children: dict[str, list] = defaultdict(list)  # scope -> direct children (leaves and scopes)
        seen = set()
        for n in self.pos:
            if G.nodes[n]["op"] in ("input", "output"):
                continue
            parts = n.split(".")
            for i in range(len(parts)):
                parent, child = ".".join(parts[:i]), ".".join(parts[: i + 1])
                self.members[parent].append(n)
                if child not in seen:
                    seen.add(child)
                    self.children[parent].append(child)
        self.io = {s: self._io(s) for s in self.members if s}

    def _io(self, s: str) -> tuple[list, list]:
        inside = set(self.members[s])
        ext = list(dict.fromkeys(a for n in self.members[s] for a in inputs(self.G, n) if a not in inside))
        outs = [n for n in self.members[s] if any(v not in inside for v in self.G.successors(n))]
        return ext, outs

    def is_scope(self, name: str) -> bool:
        return name in self.io

    def callable(self, s: str) -> bool:
        ext, outs = self.io[s]
        return len(ext) == 1 and len(outs) == 1

    def _literals(self, node: str, kind: str) -> list:
        """What the forward writes beside the tensors of a merge, as torch_fx.build_graph calls it."""
        d = self.G.nodes[node]
        if kind == "concat":
            return [1 + int(d["attrs"].get("axis", 0)) % len(d["shape"])]
        value = d["attrs"].get("value") if kind in ("add", "mul") else None
        if value is None:
            return []
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{node}: a {kind} by {value!r} cannot be emitted (numbers only)")
        return [value]

    def units(self, s: str) -> list[Unit]:
        """The steps of scope `s`'s forward, in the order the network runs them."""
        out = []

        def visit(scope: str, rel: str):
            for c in self.children[scope]:
                local = ident(c.rsplit(".", 1)[-1])
                path = f"{rel}.{local}" if rel else local
                if not self.is_scope(c):
                    op = self.G.nodes[c]["op"]
                    kind = op if op in FUNCTIONS and as_function(self.G, c) else "module"
                    out.append(Unit(path, kind, c, inputs(self.G, c), self._literals(c, kind)))
                elif self.callable(c):
                    ext, outs = self.io[c]
                    out.append(Unit(path, "scope", outs[0], ext))
                else:
                    visit(c, path)

        visit(s, "")
        return sorted(out, key=lambda u: self.pos[u.out])

    def pure_chain(self, s: str) -> bool:
        """Whether scope `s` runs its direct children one after another, each reading only the one before."""
        us = self.units(s)
        ext, outs = self.io[s]
        if any("." in u.path or u.kind in FUNCTIONS for u in us) or us[-1].out != outs[0]:
            return False
        prev = ext[0]
        readers = Counter(a for u in us for a in u.args)
        for u in us:
            if u.args != [prev] or (prev != ext[0] and readers[prev] != 1):
                return False
            prev = u.out
        return readers[ext[0]] == 1


def forward_lines(units: list[Unit], invars: dict, out: str, keep=()) -> list[str]:
    """The body of a forward: one statement per unit, the running tensor reassigned where it is not read again
    (`x = self.ln(x)`), a loop for a run of calls on `name0, name1, ...`. `invars` maps the scope's inputs to
    their argument names; names in `keep` are never reassigned."""
    uses = Counter(a for u in units for a in u.args)
    uses[out] += 1
    var, live, stmts = dict(invars), set(invars.values()), []
    for k, u in enumerate(units):
        args = [var[a] for a in u.args]
        for a in u.args:
            uses[a] -= 1
            if uses[a] == 0:
                live.discard(var[a])
        expr = _expr(u, args)
        if u.out == out and k == len(units) - 1 and uses[out] == 1:
            stmts.append((None, expr, u, args))
            break
        first = var[u.args[0]] if u.args else None
        target = first if first and uses[u.args[0]] == 0 and first not in keep else _fresh(live)
        live.add(target)
        var[u.out] = target
        stmts.append((target, expr, u, args))
    else:
        stmts.append((None, var[out], None, []))
    return _loops(stmts)


def _expr(u: Unit, args: list[str]) -> str:
    if u.kind == "add":
        return " + ".join(args + [repr(v) for v in u.extra])
    if u.kind == "mul":
        return " * ".join(args + [repr(v) for v in u.extra])
    if u.kind == "concat":
        return f"torch.cat([{', '.join(args)}], dim={u.extra[0]!r})"
    if u.kind == "linear":  # a fused group's Linear member: its math without a layout copy (ops/fused.py)
        return f"channel_linear({args[0]}, self.{u.path}.weight, self.{u.path}.bias)"
    return f"self.{u.path}({', '.join(args)})"


def _fresh(live: set) -> str:
    for i in range(len(live) + 2):
        for base in ("x", "y", "z"):
            name = base + (str(i) if i else "")
            if name not in live:
                return name
    raise AssertionError("unreachable")


def _loops(stmts) -> list[str]:
    """Statements as lines; consecutive `v = self.name{i}(v)` for i = a, a+1, ... become one loop."""
    lines, k = [], 0
    while k < len(stmts):
        run = _run(stmts, k)
        if len(run) >= 2:
            base, start, var = run[0]
            lines += [f"for i in range({start}, {start + len(run)}):" if start else f"for i in range({len(run)}):",
                      f'    {var} = getattr(self, f"{base}{{i}}")({var})']
            k += len(run)
            continue
        target, expr, _, _ = stmts[k]
        lines.append(f"{target} = {expr}" if target else f"return {expr}")
        k += 1
    return lines


def _run(stmts, k) -> list:
    """The (base, index, variable) of the run of `v = self.base{i}(v)` statements starting at `stmts[k]`."""
    run = []
    for target, _, u, args in stmts[k:]:
        m = INDEXED.match(u.path) if u is not None and u.kind == "scope" else None
        if not m or target is None or args != [target]:
            break
        base, i = m.group(1), int(m.group(2))
        if run and (base != run[0][0] or i != run[-1][1] + 1 or target != run[0][2]):
            break
        run.append((base, i, target))
    return run
