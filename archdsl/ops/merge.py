"""Merges of several tensors: add (residuals, parallel(sum)), concat (channels), mul (gating)."""
from __future__ import annotations

import operator

import torch
from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.registry import Attr, op


class Elementwise(nn.Module):
    """x0 op x1 op ... [op value], folded from the left; subclasses say what `op` is."""

    def __init__(self, value=None):
        super().__init__()
        self.value = value

    def forward(self, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = self.combine(out, x)
        return out if self.value is None else self.combine(out, self.value)


class Add(Elementwise):
    _emit_deps = (Elementwise,)

    def combine(self, a, b):
        return a + b


class Mul(Elementwise):
    _emit_deps = (Elementwise,)

    def combine(self, a, b):
        return a * b


class Div(Elementwise):
    _emit_deps = (Elementwise,)

    def combine(self, a, b):
        return a / b


class Concat(nn.Module):
    def __init__(self, dim=1):
        super().__init__()
        self.dim = dim

    def forward(self, *xs):
        return torch.cat(xs, dim=self.dim)


def _broadcast(name):
    """Shapes of one rank broadcast where one of them is 1 (a (C, 1) bias over (C, N) tokens, a (C, 1, 1) gate)."""
    def rule(a, ins):
        out = list(ins[0])
        for s in ins[1:]:
            if len(s) != len(out) or any(x != y and 1 not in (x, y) for x, y in zip(s, out)):
                shapes = " and ".join(str(list(x)) for x in ins)
                if name == "add":  # residuals and parallel(sum) end here: say it in their terms
                    raise ArchError(f"add: the branches have different shapes: {shapes}",
                                    hint="every branch must end with the same shape (or 1 along the axes it "
                                         "broadcasts over)")
                raise ArchError(f"{name}: shapes {shapes} do not broadcast",
                                hint="operands must match or be 1 along the axes they broadcast over (same rank)")
            out = [max(x, y) for x, y in zip(out, s)]
        if len(ins) == 1 and a.get("value") is None:
            raise ArchError(f"{name}() needs a second operand: a $label, a param(...) or a number",
                            hint=f"e.g. {name}($skip) or {name}(2.0)")
        return tuple(out)
    return rule


def concat_axis(a, ins) -> int:
    """The axis index; graphs the passes build (and IR saved before concat had an axis) default to channels."""
    rank, axis = len(ins[0]), a.get("axis", 0)
    if not -rank <= axis < rank:
        raise ArchError(f"concat: axis {axis} does not exist in shape {list(ins[0])} (the batch is not an axis)")
    return axis % rank


def _concat(a, ins):
    ax = concat_axis(a, ins)
    for s in ins[1:]:
        if len(s) != len(ins[0]) or any(x != y for i, (x, y) in enumerate(zip(s, ins[0])) if i != ax):
            shapes = " and ".join(str(list(x)) for x in ins)
            where = "channels" if ax == 0 else f"axis {a.get('axis')}"
            raise ArchError(f"concat: the branches differ in more than {where}: {shapes}",
                            hint=f"concat joins along {where}; the other sizes must be equal")
    return tuple(sum(s[ax] for s in ins) if i == ax else n for i, n in enumerate(ins[0]))


def _ref_fold(f):
    def ref(module, *xs):
        out = xs[0].double()
        for x in xs[1:]:
            out = f(out, x.double())
        return out if module.value is None else f(out, torch.tensor(module.value, dtype=torch.float64))
    return ref


def _concat_reference(m, *xs):
    return torch.stack([y for x in xs for y in x.double().unbind(m.dim)], m.dim)


def _value():
    return Attr("value", "float", None, doc="a number applied after the tensors: add(0.5), mul(scale), div(8)")


op("add", _value(), shape=_broadcast("add"), torch=lambda a, ins: (Add, dict(value=a.get("value"))), arity=-1,
   function=operator.add, reference=_ref_fold(operator.add),
   doc="Sum of tensors (residuals, parallel(sum), add($pos)), broadcasting size-1 axes, plus an optional number.",
   fusable=True, triton="binary",
   examples=(({}, [(3, 5, 4), (3, 5, 4)]), ({}, [(2, 7), (2, 7), (2, 7)]), ({"value": 0.5}, [(2, 7), (2, 1)]),
             ({"value": -1.5}, [(3, 4)])))
op("mul", _value(), shape=_broadcast("mul"), torch=lambda a, ins: (Mul, dict(value=a.get("value"))), arity=-1,
   function=operator.mul, reference=_ref_fold(operator.mul),
   doc="Elementwise product, broadcasting size-1 dims (gating), times an optional number.",
   fusable=True, triton="binary",
   examples=(({}, [(3, 5, 4), (3, 1, 1)]), ({}, [(2, 7), (2, 7)]), ({"value": 0.25}, [(3, 6)])))
op("div", _value(), shape=_broadcast("div"), torch=lambda a, ins: (Div, dict(value=a.get("value"))), arity=-1,
   reference=_ref_fold(operator.truediv), category="tensor",
   doc="Elementwise quotient x / y / ..., broadcasting size-1 dims, divided by an optional number: div(8), "
       "div($norm).",
   examples=(({}, [(3, 5, 4), (3, 1, 4)]), ({"value": 8.0}, [(2, 7)])))
op("concat", Attr("axis", "int", 0, doc="0: channels; -1 / 1: the tokens of a (C, N) sequence"),
   shape=_concat, torch=lambda a, ins: (Concat, dict(dim=1 + concat_axis(a, ins))), arity=-1, function=torch.cat,
   reference=_concat_reference,
   doc="Concatenation along an axis (default the channels; axis = -1 joins tokens, e.g. a CLS token).",
   exact_in_any_dtype=True,
   triton_declined="concat changes the channel count mid-chain; no epilogue step for it",
   examples=(({}, [(3, 5, 4), (2, 5, 4)]), ({}, [(1, 7), (4, 7)]), ({"axis": -1}, [(3, 2), (3, 5)]),
             ({"axis": 1}, [(2, 1, 3), (2, 4, 3)])))
