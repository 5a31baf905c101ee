"""The AST: small dataclasses, each with the Span it came from. Built by parse.py, read by elaborate.py."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from archdsl.errors import Span


@dataclass
class Node:
    span: Span = field(repr=False, compare=False)


# Expressions
@dataclass
class Const(Node):
    value: Any
    text: str = ""  # the source spelling, used to label choice options


@dataclass
class ListExpr(Node):
    items: list


@dataclass
class Name(Node):
    id: str


@dataclass
class Call(Node):
    func: str
    args: list
    kwargs: dict  # name -> expr (ordered)
    text: str = ""


@dataclass
class Index(Node):
    obj: Any
    index: Any


@dataclass
class BinOp(Node):
    op: str
    left: Any
    right: Any


@dataclass
class Unary(Node):
    op: str  # "-" or "not"
    operand: Any


@dataclass
class BoolOp(Node):
    op: str  # "and" / "or"
    items: list


# Statements and chain elements
@dataclass
class Annotation(Node):
    name: str
    args: list
    kwargs: dict


@dataclass
class Assign(Node):
    name: str
    value: Any


@dataclass
class InputDecl(Node):
    name: str
    dims: list


@dataclass
class Labeled(Node):
    label: str
    stmt: Any


@dataclass
class For(Node):
    var: str
    start: Any
    stop: Any  # None: iterate over the list `start`
    body: list


@dataclass
class Repeat(Node):
    count: Any
    body: list


@dataclass
class If(Node):
    cond: Any
    then: list
    orelse: list | None


@dataclass
class Chain(Node):
    elements: list


@dataclass
class Residual(Node):
    body: list


@dataclass
class Parallel(Node):
    mode: str
    branches: list  # list of bodies


@dataclass
class Ref(Node):
    name: str


@dataclass
class Group(Node):
    body: list


@dataclass
class Annotated(Node):
    annotation: Annotation
    element: Any


# Top level
@dataclass
class Param(Node):
    name: str
    default: Any  # expr or None


@dataclass
class Definition(Node):
    kind: str  # "block" | "model"
    name: str
    params: list
    body: list
    annotations: list
    file: str = ""


@dataclass
class SearchItem(Node):
    kind: str  # maximize | minimize | constraint | setting | annotation
    value: Any
    name: str = ""


@dataclass
class Search(Node):
    name: str
    dataset: Any
    items: list


@dataclass
class Program:
    file: str
    source: str
    blocks: dict = field(default_factory=dict)  # name -> Definition (imported ones included)
    models: dict = field(default_factory=dict)
    searches: list = field(default_factory=list)
    imports: list = field(default_factory=list)  # resolved paths

    def model(self, name: str | None = None) -> Definition:
        from archdsl.errors import ArchError, Span, did_you_mean

        if name is None:
            if not self.models:
                only = f" (only blocks: {', '.join(self.blocks)})" if self.blocks else ""
                raise ArchError(f"{self.file} defines no model{only}", Span(self.file, 1, 1),
                                hint="add `model NAME(...) { input x[C, H, W] ... }`")
            return list(self.models.values())[-1]
        if name not in self.models:
            raise ArchError(f"{self.file} has no model '{name}'",
                            hint=did_you_mean(name, self.models) or f"models: {', '.join(self.models) or 'none'}")
        return self.models[name]
