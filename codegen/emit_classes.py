"""One class per block: the scopes of an IR graph (codegen/emit_scopes.py) grouped into emitted classes.

Every scope gets a *shape*: its children's constructor expressions (codegen/emit_exprs.py), runs of identical
children ``block0, block1, ...`` (a ``repeat`` or ``for``) and its forward. Scopes of one shape are instances of
one class; where their literal values differ, the values become constructor parameters, named after the block's
own parameters where one matches (``dim``) and written as a multiple of an earlier one where they are
(``4 * dim``). A short callable chain of a label or loop body is written in place as an ``nn.Sequential``.
"""
from __future__ import annotations

import builtins
import keyword
import os
import re
from dataclasses import dataclass, field

import networkx as nx
from torch import nn

from archdsl.frontend.names import EMITTED_GLOBALS
from archdsl.ir.graph import inputs
from archdsl.ir.modules import module_for
from codegen.emit_exprs import Code, Leaf, Lit, Seq, class_ref, ident, literal, lowered_dtype
from codegen.emit_scopes import INDEXED, Scopes, Unit, forward_lines
from codegen.torch_fx import as_function

INLINE_MAX = 4  # children of a chain written in place as nn.Sequential(OrderedDict(...))
_RESERVED = EMITTED_GLOBALS | {"self", "i", "x", "OrderedDict", "Precision"}


@dataclass
class Shape:
    scope: str
    items: list  # ("attr", name, expr) | ("run", base, start, [expr, ...])
    forward: list | None  # forward body lines; None: the scope only holds its children
    sequential: bool = False
    args: tuple = ("x",)  # the forward's arguments

    def key(self, base: str):
        items = tuple(("attr", n, e[0].key()) if t == "attr" else ("run", n, e[0], e[1][0].key(), uniform(e[1]))
                      for t, n, *e in self.items)
        return base, self.sequential, tuple(self.forward or ()), self.forward is None, self.args, items

    def slots(self) -> list:
        out = []
        for t, n, *e in self.items:
            if t == "attr":
                out += e[0].slots()
            elif uniform(e[1]):
                out += [("n_" + n, len(e[1]))] + e[1][0].slots()
            else:
                rows = [tuple(v for _, v in x.slots()) for x in e[1]]
                out.append((n + "_args", [r[0] if len(r) == 1 else r for r in rows]))
        return out


@dataclass
class Klass:
    base: str
    desc: str
    proto: Shape
    instances: list = field(default_factory=list)
    name: str = ""
    params: list = field(default_factory=list)  # (name, {scope: value})
    renders: list = field(default_factory=list)  # per slot: Lit | Code

    def args_of(self, scope: str) -> tuple:
        return tuple((n, vals[scope]) for n, vals in self.params)


class ClassCall:
    """`ClassName(a, b)`: a scope built by its emitted class; the arguments are known once classes are unified."""

    def __init__(self, klass: Klass, scope: str, fp: tuple, dtype: str | None = None):
        self.klass, self.scope, self.dtype = klass, scope, dtype
        self.fp = fp  # the scope's literal content: calls with equal fingerprints build equal modules

    def key(self):
        return ("call", id(self.klass), self.dtype)

    def slots(self) -> list:
        return list(self.klass.args_of(self.scope))

    def render(self, slots) -> str:
        text = f"{self.klass.name}({', '.join(s.code() for s in slots)})"
        return f"{text}.to(torch.{ident(self.dtype)})" if self.dtype else text


class Builder:
    def __init__(self, G: nx.DiGraph, file: str):
        self.G, self.file, self.sc = G, file, Scopes(G)
        self.records = G.graph.get("scopes") or {}
        self.classes: dict = {}  # key -> Klass, in creation order (children before parents)
        self.expr: dict = {}  # scope -> the expression its parent builds it with
        self.used: list = []  # leaf module classes, for their sources

    def build(self) -> tuple[list[Klass], Shape]:
        """The classes, children before parents, and the model's own shape."""
        self.shapes: dict = {}
        for s in sorted(self.sc.io, key=lambda s: -s.count(".")):
            self._scope(s)
        inp = self.G.graph["input"]
        forward = forward_lines(self.sc.units(""), {inp: ident(inp)}, inputs(self.G, "output")[0], keep={inp})
        root = Shape("", self.items(""), forward, args=(ident(inp),))  # fused groups at the top make classes
        return list(self.classes.values()), root

    def _scope(self, s: str) -> None:
        kind = self.records.get(s, {}).get("kind")
        callable_ = self.sc.callable(s)
        items = self.items(s)
        chain = callable_ and self.sc.pure_chain(s) and all(_seq_safe(n) for _, n, *_ in items)
        runs = any(t == "run" for t, *_ in items)
        if chain and kind != "block" and not runs and len(items) <= INLINE_MAX:
            self.expr[s] = Seq(tuple((n, e[0]) for _, n, *e in items))
            return
        forward = None
        if callable_ and not (chain and runs):
            ext, outs = self.sc.io[s]
            forward = forward_lines(self.sc.units(s), {ext[0]: "x"}, outs[0])
        self.expr[s] = self._instance(Shape(s, items, forward, sequential=bool(chain and runs)), self._base(s),
                                      self._desc(s))

    def _instance(self, shape: Shape, base: str, desc: str, dtype=None) -> ClassCall:
        self.shapes[shape.scope] = shape
        key = shape.key(base)
        if key not in self.classes:
            self.classes[key] = Klass(base, desc, shape)
        self.classes[key].instances.append(shape.scope)
        return ClassCall(self.classes[key], shape.scope, _fp_shape(shape), dtype)

    def fused(self, node: str) -> ClassCall:
        """A deploy graph's fused group as a class of its own: its members as attributes, its steps as the
        forward (the math of archdsl.ops.fused.FusedGroup, Linear members through channel_linear)."""
        from archdsl.ops.conv import Linear
        from archdsl.ops.fused import FusedGroup, channel_linear

        local = {c.__name__: c for c in FusedGroup._emit_deps if isinstance(c, type)}
        items, units = [], []
        for name, op, ref, kwargs, args in module_for(self.G, node)[1]["steps"]:
            cls = getattr(nn, ref[3:]) if ref.startswith("nn.") else local[ref]
            for used in (cls, channel_linear) if cls is Linear else (cls,):
                if used not in self.used:
                    self.used.append(used)
            items.append(("attr", ident(name), Leaf(cls, ref, tuple(kwargs))))
            units.append(Unit(ident(name), "linear" if cls is Linear else "module", name, list(args)))
        names = ["x", "y", "z"] + [f"x{i}" for i in range(3, len(inputs(self.G, node)))]
        invars = {f"in{i}": names[i] for i in range(len(inputs(self.G, node)))}
        forward = forward_lines(units, invars, units[-1].out)
        ops = [ident(self.G.nodes[node]["attrs"].ops[i]) for i in range(len(units))]
        base = "Fused" + "".join(p.capitalize() for o in dict.fromkeys(ops) for p in o.split("_"))[:40]
        dtype = lowered_dtype(self.G, node) if self.G.graph.get("precision_lowered") else None
        return self._instance(Shape(node, items, forward, args=tuple(invars.values())), base,
                              f"fused group: {' >> '.join(ops)} (deploy)", dtype)

    def items(self, s: str) -> list:
        """The children's constructions in order; `name0, name1, ...` scopes of one structure as one run."""
        items = []
        for c in self.sc.children[s]:
            if not self.sc.is_scope(c) and as_function(self.G, c):
                continue  # a merge: an expression in the forward, no module
            local = ident(c.rsplit(".", 1)[-1])
            e = self.expr[c] if self.sc.is_scope(c) else \
                self.fused(c) if self.G.nodes[c]["op"] == "fused" else self.leaf(c)
            m = INDEXED.match(local) if self.sc.is_scope(c) else None
            last = items[-1] if items else None
            if m and last and last[0] == "run" and last[1] == m.group(1) and \
                    int(m.group(2)) == last[2] + len(last[3]) and last[3][0].key() == e.key():
                last[3].append(e)
            elif m:
                items.append(("run", m.group(1), int(m.group(2)), [e], c))
            else:
                items.append(("attr", local, e))
        # a lone `name3` is a run only where it is a whole loop (`repeat 1`): elsewhere it is just a name
        bases = [it[1] for it in items if it[0] == "run"]
        return [("attr", f"{it[1]}{it[2]}", it[3][0]) if it[0] == "run" and len(it[3]) == 1 and (
                bases.count(it[1]) > 1 or self.records.get(it[4], {}).get("kind") not in ("for", "repeat"))
                else it[:4] for it in items]

    def leaf(self, node: str) -> Leaf:
        cls, kwargs = module_for(self.G, node)
        if cls not in self.used:
            self.used.append(cls)
        d, wrap = self.G.nodes[node], ()
        if self.G.graph.get("precision_lowered"):
            dtype = lowered_dtype(self.G, node)
            wrap = ("dtype", dtype) if dtype else ()
        elif d["precision"] != "fp32":
            levels = self.G.graph.get("act_levels", 255)  # 7-bit activations (archdsl.quant)
            wrap = ("precision", d["precision"]) + ((levels,) if d["precision"] == "int8" and levels != 255 else ())
            from archdsl.quant import Precision

            if Precision not in self.used:
                self.used.append(Precision)
        return Leaf(cls, class_ref(cls), tuple(kwargs.items()), wrap)

    def _base(self, s: str) -> str:
        rec = self.records.get(s)
        name = rec["name"] if rec else re.sub(r"[0-9_]+$", "", s.rsplit(".", 1)[-1]) or "Part"
        return ident("".join(p.capitalize() for p in name.split("_")) or "Part")

    def _desc(self, s: str) -> str:
        rec = self.records.get(s)
        if not rec:
            return f"the modules under {s}"
        what = {"block": f"block {ident(rec['name'])}", "for": f"one iteration of `{ident(rec['name'])}: for`",
                "repeat": f"one repeat of `{ident(rec['name'])}: repeat`"}.get(rec["kind"], f"`{ident(rec['name'])}: ...`")
        file = escape(os.path.basename(rec.get("file") or "")) or self.file  # an imported block: its own file
        return f"{what}, {file} line {int(rec['line'])}"


def unify(k: Klass, shapes: dict, records: dict, taken: set, widths: dict) -> None:
    """The constructor parameters of class `k`: the slots whose values differ between its instances, one
    parameter per distinct column of values (an integer multiple of one is written as such). `widths`: each
    scope's input channels."""
    slots = {s: shapes[s].slots() for s in k.instances}
    first = slots[k.instances[0]]
    params = []  # [hint, {scope: value}, [(Code, factor), ...]]
    for j, (hint_name, value) in enumerate(first):
        col = {s: slots[s][j][1] for s in k.instances}
        if len({literal(v) for v in col.values()}) == 1:
            k.renders.append(Lit(value))
            continue
        code = Code("")
        found = next(((p, 1) for p in params if _reprs(p[1]) == _reprs(col)), None) or _multiple(col, params)
        if found:
            found[0][2].append((code, found[1]))
        else:
            params.append([hint_name, col, [(code, 1)]])
        k.renders.append(code)
    used = set(taken)
    names = {}
    for i, (_, col, _) in enumerate(params):  # the block's own parameter names first, then torch's roles
        arg = _block_arg(col, k.instances, records)
        if arg and _safe(arg, set()) not in used:
            names[i] = _safe(arg, used)
    for i, (hint_name, col, _) in enumerate(params):  # a width equal to the input's channels is `dim_in`
        if hint_name in ("dim", "dim_in") and all(col[s] == widths.get(s) for s in col):
            hint_name = "dim_in"
        names.setdefault(i, _safe(hint_name, used))
    for i, (_, col, codes) in enumerate(params):
        k.params.append((names[i], col))
        for code, factor in codes:
            code.text = names[i] if factor == 1 else f"{factor} * {names[i]}"


def _reprs(col: dict) -> list:
    return [literal(v) for v in col.values()]


def _multiple(col: dict, params: list):
    """(param, factor) when every value of `col` is the same integer multiple (3 or more) of a parameter's."""
    if not all(type(v) is int for v in col.values()):
        return None
    for p in params:
        vals = p[1]
        if all(type(v) is int and v > 0 for v in vals.values()):
            ratios = {col[s] / vals[s] for s in col}
            r = ratios.pop() if len(ratios) == 1 else 0
            # an MLP's 4x (ResNet's expansion, 3x or 4x) reads as `4 * dim`; a stage's 2x is its own width
            if r == int(r) and r >= 3:
                return p, int(r)
    return None


def _block_arg(col: dict, instances: list, records: dict) -> str | None:
    """The name of the block parameter that has exactly these values in every instance, if one has."""
    want = [literal(col[s]) for s in instances]
    args = [records.get(s, {}).get("args", {}) for s in instances]
    return next((n for n in args[0] if all(n in a for a in args) and [literal(a[n]) for a in args] == want), None)


def _safe(name: str, used: set) -> str:
    name = ident(name)
    while keyword.iskeyword(name) or hasattr(builtins, name) or name in _RESERVED:
        name += "_"
    base, n = name, 2
    while name in used:
        name, n = f"{base}_{n}", n + 1
    used.add(name)
    return name


def uniform(exprs: list) -> bool:
    return len({repr(_fp(e)) for e in exprs}) == 1


def _fp(e):
    if isinstance(e, ClassCall):
        return ("call", id(e.klass), e.fp)
    if isinstance(e, Seq):
        return ("seq",) + tuple((n, _fp(x)) for n, x in e.children)
    return (e.key(), tuple(repr(v) for _, v in e.slots()))


def _fp_shape(shape: Shape):
    return tuple((t, n) + tuple(_fp(x) for x in (e[1] if t == "run" else e[:1])) for t, n, *e in shape.items)


def escape(text: str) -> str:
    """Text for a comment or docstring: no quote, backslash or newline can end it early."""
    return text.encode("unicode_escape").decode("ascii").replace('"', '\\"')


def _seq_safe(name: str) -> bool:
    return not hasattr(nn.Sequential(), name)
