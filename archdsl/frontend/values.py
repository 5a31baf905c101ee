"""Run-time values of the elaborator and the expression evaluator (no eval(): a small tree walk)."""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

from archdsl.errors import ArchError, Span, did_you_mean
from archdsl.frontend import ast as A
from archdsl.ir.graph import LAYOUTS, PRECISIONS


@dataclass(repr=False)  # every value prints as .arch source, so no message ever shows a Python repr
class OpValue:
    """An op or block, possibly with some arguments already given: ``dwconv(k)`` as a value."""

    name: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    span: Span | None = None

    def label(self) -> str:
        parts = [show(a) for a in self.args] + [f"{k}={show(v)}" for k, v in self.kwargs.items()]
        return f"{self.name}({', '.join(parts)})" if parts else self.name

    def __eq__(self, other):
        return isinstance(other, OpValue) and self.label() == other.label()

    def __repr__(self):
        return self.label()

    def __hash__(self):
        return hash(self.label())


@dataclass(repr=False)
class Closure:
    """A `{ ... }` block literal with the variables it saw where it was written."""

    body: list
    frame: object
    span: Span | None = None

    def label(self) -> str:
        return "{...}"

    __repr__ = label


@dataclass(frozen=True, repr=False)
class Tensor:
    node: str
    shape: tuple

    def __repr__(self):
        return f"${self.node}"


def show(v) -> str:
    """How a value reads in .arch source (used for choice labels, --set values and emitted .arch files)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (OpValue, Closure)):
        return v.label()
    if isinstance(v, str):
        return v if v in PRECISIONS or v in LAYOUTS else f'"{v}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(show(x) for x in v) + "]"
    if isinstance(v, Tensor):
        return f"${v.node}"
    return repr(v)


MAX_LIST = 1_000_000  # `[0] * n` or `a = a + a` in a loop must fail with a message, not exhaust memory
MAX_INT = 10**18  # no shape, count or size is larger; bigger integers only ever come from mistakes
# `zeros`, `ones`, `normal(std)`, `trunc_normal(std)` are the inits of param(...), as the strings it takes.
CONSTANTS = {p: p for p in PRECISIONS} | {layout: layout for layout in LAYOUTS} | {"zeros": "zeros", "ones": "ones"}

_BINOPS = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "//": operator.floordiv,
    "%": operator.mod, "**": operator.pow, "==": operator.eq, "!=": operator.ne, "<": operator.lt,
    "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}


def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def checked_number(value, what: str, span: Span | None):
    """`value` if it is a finite float or an integer within MAX_INT; the one place literals (from a file or
    --set) and arithmetic results are checked, so no later float() or tensor fill can overflow."""
    if isinstance(value, complex):
        raise ArchError(f"{what} is not a real number", span)
    if isinstance(value, float) and not math.isfinite(value):
        size = ": it is too large" if math.isinf(value) else ""
        raise ArchError(f"{what} is not a finite number{size}", span, hint="numbers must stay within about 1e308")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        raise ArchError(f"number too large: {what}", span, hint="integers are limited to 10**18")
    return value


def _sized(n: int, span: Span):
    if n > MAX_LIST:
        raise ArchError(f"a list or string of {n} items is too long (at most {MAX_LIST})", span)


def binop(op: str, a, b, span: Span):
    if op == "+" and isinstance(a, str) and isinstance(b, (str, int)):
        _sized(len(a) + len(str(b)), span)
        return a + str(b)  # "stage" + i names a share group per stage
    if op == "+" and isinstance(a, list) and isinstance(b, list):
        _sized(len(a) + len(b), span)
        return a + b
    if op == "*" and isinstance(a, list) and isinstance(b, int) and not isinstance(b, bool):
        _sized(len(a) * b, span)
        return a * b
    if op in ("==", "!="):
        return _BINOPS[op](a, b)
    if not (_num(a) and _num(b)):
        raise ArchError(f"cannot apply '{op}' to {show(a)} and {show(b)}", span,
                        hint="arithmetic works on numbers; '+' also joins lists and strings")
    what = f"{show(a)} {op} {show(b)}"
    if op == "**" and isinstance(a, int) and isinstance(b, int) and abs(a) > 1 and b * math.log2(abs(a)) > 64:
        raise ArchError(f"number too large: {what}", span)  # before computing it
    try:
        out = _BINOPS[op](a, b)
    except ZeroDivisionError:
        raise ArchError(f"division by zero in {what}", span) from None
    except OverflowError:
        raise ArchError(f"number too large: {what}", span) from None
    return checked_number(out, what, span)


def index(obj, i, span: Span):
    if not isinstance(obj, (list, tuple, str)):
        raise ArchError(f"cannot index {show(obj)}: only lists can be indexed", span)
    if isinstance(i, bool) or not isinstance(i, int):
        raise ArchError(f"list index must be an integer, got {show(i)}", span)
    if not -len(obj) <= i < len(obj):
        raise ArchError(f"index {i} is out of range for a list of {len(obj)} items", span,
                        hint=f"valid indices are 0..{len(obj) - 1}")
    return obj[i]


def _fn_len(span, x):
    if not isinstance(x, (list, tuple, str)):
        raise ArchError(f"len() takes a list, got {show(x)}", span)
    return len(x)


def _fn_num(name, f):
    def call(span, *xs):
        if not xs or not all(_num(x) for x in xs):
            raise ArchError(f"{name}() takes numbers, got {', '.join(map(show, xs)) or 'nothing'}", span)
        return f(*xs)

    return call


FUNCTIONS = {
    "min": _fn_num("min", min), "max": _fn_num("max", max), "abs": _fn_num("abs", abs),
    "round": _fn_num("round", lambda x, n=0: round(x) if n == 0 else round(x, int(n))),
    "len": _fn_len, "str": lambda span, x: x if isinstance(x, str) else show(x),
    "normal": lambda span, std: _init("normal", std, span),
    "trunc_normal": lambda span, std: _init("trunc_normal", std, span),
}


def _init(name, std, span):
    if not _num(std) or std < 0:
        raise ArchError(f"{name}(std) takes a non-negative number, got {show(std)}", span, hint=f"e.g. {name}(0.02)")
    return f"{name}({float(std)!r})"
SEARCH_FUNCTIONS = ("choice", "int", "float")


def unknown_name(name: str, span: Span, candidates) -> ArchError:
    return ArchError(f"unknown name '{name}'", span, hint=did_you_mean(name, candidates))


def is_search_call(expr) -> bool:
    return isinstance(expr, A.Call) and expr.func in SEARCH_FUNCTIONS


def is_plain(v) -> bool:
    """Whether a value is plain data (a number, string or list of them), as opposed to an op, block or tensor."""
    return isinstance(v, (bool, int, float, str)) or isinstance(v, (list, tuple)) and all(map(is_plain, v))
