"""Merges of several tensors: add (residuals, parallel(sum)), concat (channels), mul (gating)."""
from __future__ import annotations

import operator

import torch
from torch import nn

from archdsl.errors import ArchError
from archdsl.ops.registry import op


class Add(nn.Module):
    def forward(self, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class Mul(nn.Module):
    def forward(self, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = out * x
        return out


class Concat(nn.Module):
    def forward(self, *xs):
        return torch.cat(xs, dim=1)


def _same(name):
    def rule(a, ins):
        for s in ins[1:]:
            if tuple(s) != tuple(ins[0]):
                shapes = " and ".join(str(list(x)) for x in ins)
                raise ArchError(f"{name}: the branches have different shapes: {shapes}",
                                hint="every branch must end with the same channels and spatial size")
        return tuple(ins[0])
    return rule


def _broadcast(a, ins):
    out = list(ins[0])
    for s in ins[1:]:
        if len(s) != len(out) or any(x != y and 1 not in (x, y) for x, y in zip(s, out)):
            shapes = " and ".join(str(list(x)) for x in ins)
            raise ArchError(f"mul: shapes {shapes} do not broadcast",
                            hint="gates must match the input or be 1 along the dims they broadcast over")
        out = [max(x, y) for x, y in zip(out, s)]
    return tuple(out)


def _concat(a, ins):
    for s in ins[1:]:
        if len(s) != len(ins[0]) or tuple(s[1:]) != tuple(ins[0][1:]):
            shapes = " and ".join(str(list(x)) for x in ins)
            raise ArchError(f"concat: the branches differ in more than channels: {shapes}",
                            hint="concat joins along channels; spatial sizes must be equal")
    return (sum(s[0] for s in ins), *ins[0][1:])


def _ref_fold(f):
    def ref(module, *xs):
        out = xs[0].double()
        for x in xs[1:]:
            out = f(out, x.double())
        return out
    return ref


op("add", shape=_same("add"), torch=lambda a, ins: (Add, {}), arity=-1, function=operator.add,
   reference=_ref_fold(operator.add), doc="Sum of tensors of one shape (residuals, parallel(sum)).",
   fusable=True, triton="binary",
   examples=(({}, [(3, 5, 4), (3, 5, 4)]), ({}, [(2, 7), (2, 7), (2, 7)])))
op("mul", shape=_broadcast, torch=lambda a, ins: (Mul, {}), arity=-1, function=operator.mul,
   reference=_ref_fold(operator.mul), doc="Elementwise product, broadcasting size-1 dims (gating).",
   fusable=True, triton="binary",
   examples=(({}, [(3, 5, 4), (3, 1, 1)]), ({}, [(2, 7), (2, 7)])))
op("concat", shape=_concat, torch=lambda a, ins: (Concat, {}), arity=-1, function=torch.cat,
   reference=lambda m, *xs: torch.stack([y for x in xs for y in x.double().unbind(1)], 1),
   doc="Concatenation along channels.", exact_in_any_dtype=True,
   triton_declined="concat changes the channel count mid-chain; no epilogue step for it", examples=(({}, [(3, 5, 4), (2, 5, 4)]), ({}, [(1, 7), (4, 7)])))
