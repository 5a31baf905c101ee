"""Constructor expressions of an emitted file, with their literal values taken out as *slots*.

Two scopes whose expressions have the same structure (``key``) can share one class: the slots where their values
differ become the class's constructor arguments (codegen/emit_classes.py). Rendering puts each slot back either
as a ``repr``'d literal or as code over the class's parameters (``dim``, ``4 * dim``).
"""
from __future__ import annotations

import functools
import inspect
import re
from dataclasses import dataclass

from torch import nn

from archdsl.errors import ArchError

_LITERALS = (bool, int, float, str, type(None))
_SPATIAL = re.compile(r"^(Conv|ConvTranspose|MaxPool|AvgPool)[123]d$")  # torch takes `k` for `(k, k)` here
_SPATIAL_ARGS = ("kernel_size", "stride", "padding", "dilation", "output_padding")
# parameter names for values torch calls by their role in one layer; the block's own names win where they match
_HINTS = {"in_channels": "dim_in", "in_features": "dim_in", "out_channels": "dim", "out_features": "dim",
          "normalized_shape": "dim", "num_features": "dim", "num_channels": "dim", "channels": "dim"}


def literal(v) -> str:
    """repr of a plain literal; anything else is refused (it would not be data)."""
    if isinstance(v, _LITERALS):
        if isinstance(v, float) and v != v:
            return "float('nan')"
        return repr(v)
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        return "{" + ", ".join(f"{k!r}: {literal(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        inner = ", ".join(literal(x) for x in v)
        return f"({inner}{',' if len(v) == 1 else ''})" if isinstance(v, tuple) else f"[{inner}]"
    raise ArchError(f"internal: cannot emit {type(v).__name__} value {v!r} as a literal")


def ident(name: str) -> str:
    """A name from the IR or a block on its way into the source: it must be an identifier (it always is)."""
    if not name.isidentifier():
        raise ArchError(f"internal: {name!r} is not an identifier and cannot be emitted")
    return name


def class_ref(cls: type) -> str:
    if cls.__module__.startswith("torch.nn"):
        if getattr(nn, cls.__name__, None) is not cls:
            raise ArchError(f"internal: {cls.__module__}.{cls.__name__} is not reachable as nn.{cls.__name__}")
        return f"nn.{cls.__name__}"
    return ident(cls.__name__)


def lowered_dtype(G, node: str) -> str | None:
    """A deploy node's low float dtype (torch's attribute name), as codegen.torch_fx.with_dtype converts it;
    None where it stays as built (a conversion of a module without floating tensors is a no-op)."""
    from archdsl.ir.modules import meta_module
    from archdsl.quant import LOW_FLOAT_DTYPES

    dtype = G.nodes[node].get("dtype")
    if dtype not in LOW_FLOAT_DTYPES:
        return None
    return dtype if any(t.is_floating_point() for t in meta_module(G, node).state_dict().values()) else None


def hint(name: str) -> str:
    return _HINTS.get(name, name)


@dataclass
class Lit:
    """A slot rendered as its literal value."""

    value: object

    def code(self) -> str:
        return literal(self.value)


@dataclass
class Code:
    """A slot rendered as code over the class's parameters."""

    text: str

    def code(self) -> str:
        return self.text


@functools.cache
def _signature(cls: type) -> tuple[list, dict]:
    """(required parameter names in order, defaults) of a class's constructor."""
    try:
        params = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):
        return [], {}
    plain = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    required = [p.name for p in plain if p.default is p.empty and p.kind == p.POSITIONAL_OR_KEYWORD]
    return required, {p.name: p.default for p in plain if p.default is not p.empty}


@dataclass
class Leaf:
    """`Cls(args)` for one op module, with its precision wrapper or dtype (codegen/torch_fx.py)."""

    cls: type
    ref: str
    kwargs: tuple  # ((name, value), ...)
    wrap: tuple = ()  # ("precision", "int8") | ("dtype", "bfloat16") | ()

    def __post_init__(self):
        if self.ref.startswith("nn.") and _SPATIAL.match(self.cls.__name__):
            self.kwargs = tuple((k, v[0] if k in _SPATIAL_ARGS and _same(v) else v) for k, v in self.kwargs)
        required, _ = _signature(self.cls)
        rank = {n: i for i, n in enumerate(required)}
        self.kwargs = tuple(sorted(self.kwargs, key=lambda kv: rank.get(kv[0], len(rank))))

    def key(self):
        return ("leaf", self.ref, tuple(k for k, _ in self.kwargs), self.wrap)

    def slots(self) -> list:
        return [(hint(k), v) for k, v in self.kwargs]

    def render(self, slots) -> str:
        required, defaults = _signature(self.cls)
        parts, positional = [], True
        for (k, _), s in zip(self.kwargs, slots):
            if isinstance(s, Lit) and k in defaults and _equal(s.value, defaults[k]):
                positional = False
                continue
            positional = positional and k in required
            parts.append(s.code() if positional else f"{k}={s.code()}")
        text = f"{self.ref}({', '.join(parts)})"
        if self.wrap and self.wrap[0] == "precision":
            levels = f", levels={literal(self.wrap[2])}" if len(self.wrap) > 2 else ""
            return f"Precision({text}, {literal(self.wrap[1])}{levels})"
        return f"{text}.to(torch.{ident(self.wrap[1])})" if self.wrap else text


@dataclass
class Seq:
    """`nn.Sequential(OrderedDict(a=..., b=...))`: a short chain of named children, written in place."""

    children: tuple  # ((name, expr), ...)

    def key(self):
        return ("seq",) + tuple((n, e.key()) for n, e in self.children)

    def slots(self) -> list:
        return [s for _, e in self.children for s in e.slots()]

    def render(self, slots) -> str:
        parts, k = [], 0
        for name, e in self.children:
            n = len(e.slots())
            parts.append(f"{ident(name)}={e.render(slots[k:k + n])}")
            k += n
        return f"nn.Sequential(OrderedDict({', '.join(parts)}))"


def _same(v) -> bool:
    return isinstance(v, tuple) and len(v) > 0 and all(x == v[0] and type(x) is type(v[0]) for x in v)


def _equal(a, b) -> bool:
    return type(a) is type(b) and a == b
