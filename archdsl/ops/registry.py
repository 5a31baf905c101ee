"""The op registry: one registration states all of an op's facts.

An op is called by name from an .arch file (``dwconv(7)``, ``linear(4 * dim)``, ``gelu``). Its OpSpec says
which attributes it takes (types, defaults, checks), how its output shape follows from its input shapes,
how many parameters and MACs it has, which torch module implements it, an independent reference that
tests compare the module against, and what the back ends need to know: whether it fuses, whether it is exact in
any dtype, how it folds into a conv at deploy, which Triton rule lowers it. Tests parametrize over
``all_ops()``, so a new op gets shape, cost, numeric and back-end tests by being registered. Adding an op never
touches the grammar.

Shapes never include the batch: an image is ``(C, H, W)``, a sequence ``(C, L)``, a feature vector ``(C,)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from archdsl.errors import ArchError, did_you_mean

Shape = tuple[int, ...]
REQUIRED = object()
# The precisions a node may run at (`@precision(...)`); an op's `precisions` is a subset.
PRECISIONS = ("fp32", "bf16", "fp16", "int8", "fp8", "fp8_e4m3", "fp8_e5m2")
INTERNAL_CATEGORIES = ("kernel", "compiler")

# Attribute kinds. "ints" is an int or a list of ints, expanded to one entry per spatial dim of the input.
KINDS = ("int", "float", "bool", "str", "ints", "floats", "any")


@dataclass(frozen=True)
class Attr:
    name: str
    kind: str
    default: Any = REQUIRED
    choices: tuple | None = None  # allowed values for a "str" attribute
    check: Callable[[Any], str | None] | None = None  # returns a complaint, or None when the value is fine
    doc: str = ""

    def __post_init__(self):
        assert self.kind in KINDS, self.kind


class Attrs(dict):
    """Validated attributes of one op application; read as ``a.k`` or ``a["k"]``."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass(frozen=True)
class Fold:
    """How an op becomes a plain `conv` at deploy, exactly: its train-time structure folded into one kernel.

    The deploy pass named by `by` applies it: ``"fold_kernels"`` for a kernel computed from parameters (dcls,
    wconv), ``"reparam_branches"`` for parallel conv + BN branches summed (replk, dilreparam).
    """

    by: str
    conv: Callable[[Attrs, list], dict]  # (attrs, input shapes) -> the attrs of the equivalent conv
    kernel: Callable  # the op's trained module, in float64 and eval mode -> (kernel, bias or None) of that conv


@dataclass
class OpSpec:
    name: str
    attrs: tuple[Attr, ...]
    shape: Callable[[Attrs, list[Shape]], Shape]
    torch: Callable[[Attrs, list[Shape]], tuple[type, dict]]  # -> (nn.Module class, literal kwargs)
    params: Callable[[Attrs, list[Shape]], int] = lambda a, ins: 0
    macs: Callable[[Attrs, list[Shape], Shape], int] = lambda a, ins, out: 0
    reference: Callable | None = None  # (module, *inputs) -> output, written another way, for tests
    arity: int = 1  # tensor inputs; -1 for "one or more" (merges)
    function: Callable | None = None  # a parameter-free op may lower to a plain torch function instead
    examples: tuple = ()  # ((attrs dict, [input shapes]), ...) exercised by the registry-driven tests
    aliases: tuple[str, ...] = ()
    category: str = "core"
    doc: str = ""
    # MACs are cross-checked against torch's FlopCounterMode (which counts conv/linear/matmul) unless the
    # op does work that counter cannot see (an FFT, an explicit gather) - then say so here.
    flop_counter_exact: bool = True
    # Precisions the op can run at (there is no integer FFT, for instance); elaboration rejects the rest.
    precisions: tuple[str, ...] = PRECISIONS
    # Spatial ranks at which the half-precision floats (bf16, fp16) run, when not all: torch has no CPU kernel
    # for some (3-D average pooling in bf16/fp16), so `@precision(bf16)` there is refused at check time.
    half_spatial_dims: tuple[int, ...] | None = None
    # How many of the op's parameters are tied across the nodes of one `share` group (counted once).
    shared_params: Callable[[Attrs, list[Shape]], int] | None = None
    spatial_dims: tuple[int, ...] = (0, 1, 2, 3)  # how many spatial dims the input may have
    # An op with several results (chunk, split) says how many; the front end makes one node per piece, each with
    # its `piece` attribute set, and binds the list of them (`$qkv[1]`).
    pieces: Callable[[Attrs, list[Shape]], int] | None = None
    # Its values do not depend on its input's (param: the input gives only the batch size), so an .arch file may
    # pass it as an operand: `add(param([c, n]))` applies it to the current tensor first.
    source: bool = False
    min_input_rank: int = 1
    # Back-end facts: the passes and the Triton planner read them here (tests check each against behaviour).
    fusable: bool = False  # group_fusion may chain it with its producer and reader into one fused call
    exact_in_any_dtype: bool = False  # its result holds only values of its inputs: bf16 and fp32 agree exactly
    fold: Fold | None = None  # at deploy it becomes a plain conv (see Fold)
    triton: str | None = None  # its rule as a member of a fused group in codegen/triton/plan.py (RULES)
    triton_declined: str = ""  # why it has no Triton rule, for the planner's refusal
    # Inserted by the compiler's passes, never called from an .arch file (the front end refuses it). Ops of
    # the "kernel" and "compiler" categories (cast, quantize, int8_*, fused, ...) are internal by default.
    internal: bool | None = None

    def __post_init__(self):
        if self.internal is None:
            self.internal = self.category in INTERNAL_CATEGORIES

    def precision_problem(self, precision: str, ins: list[Shape]) -> str | None:
        """Why the op cannot run at `precision` on inputs of these shapes (None when it can)."""
        if precision not in self.precisions:
            return f"{self.name} cannot run at {precision}"
        dims = len(ins[0]) - 1 if ins else 0
        if precision in ("bf16", "fp16") and self.half_spatial_dims is not None and dims not in self.half_spatial_dims:
            return f"{self.name} cannot run at {precision} on a {dims}-D input (torch has no such kernel)"
        return None

    def bind(self, args: Sequence, kwargs: dict, ins: list[Shape]) -> Attrs:
        """Check a call's arguments against the declared attributes; return the validated Attrs.

        Raises ArchError (without a span; the caller adds it) naming the op and the attribute.
        """
        if len(args) > len(self.attrs):
            raise ArchError(
                f"{self.name}() takes at most {len(self.attrs)} positional arguments, got {len(args)}",
                hint=f"signature: {self.signature()}",
            )
        values: dict[str, Any] = {}
        for attr, value in zip(self.attrs, args):
            values[attr.name] = value
        names = {a.name for a in self.attrs}
        for key, value in kwargs.items():
            if key not in names:
                hint = did_you_mean(key, names) or f"signature: {self.signature()}"
                raise ArchError(f"{self.name}() has no attribute '{key}'", hint=hint)
            if key in values:
                raise ArchError(f"{self.name}() got attribute '{key}' twice (positionally and by name)")
            values[key] = value
        ndim = len(ins[0]) - 1 if ins else 0
        out = Attrs()
        for attr in self.attrs:
            if attr.name in values:
                out[attr.name] = _coerce(self.name, attr, values[attr.name], ndim)
            elif attr.default is REQUIRED:
                raise ArchError(
                    f"{self.name}() is missing required attribute '{attr.name}'",
                    hint=f"signature: {self.signature()}",
                )
            else:
                default = attr.default
                out[attr.name] = _coerce(self.name, attr, default, ndim) if default is not None else None
        return out

    def signature(self) -> str:
        parts = []
        for a in self.attrs:
            parts.append(a.name if a.default is REQUIRED else f"{a.name}={a.default!r}")
        return f"{self.name}({', '.join(parts)})"


def _coerce(op: str, attr: Attr, value: Any, ndim: int) -> Any:
    def bad(what: str) -> ArchError:
        return ArchError(f"{op}(): attribute '{attr.name}' {what}, got {_show(value)}")

    kind = attr.kind
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise bad("must be an integer")
        value = int(value)
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("must be a number")
        value = _float32(op, attr, value)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise bad("must be true or false")
    elif kind == "str":
        if not isinstance(value, str):
            raise bad("must be a name or string")
        if attr.choices and value not in attr.choices:
            raise ArchError(
                f"{op}(): attribute '{attr.name}' must be one of {', '.join(map(str, attr.choices))}; got {value!r}",
                hint=did_you_mean(value, attr.choices),
            )
    elif kind == "ints":
        items = list(value) if isinstance(value, (list, tuple)) else [value] * max(ndim, 1)
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v for v in items):
            raise bad("must be an integer or a list of integers")
        if ndim and len(items) != ndim:
            raise bad(f"must have one entry per spatial dimension ({ndim})")
        value = tuple(int(v) for v in items)
    elif kind == "floats":
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in items):
            raise bad("must be a list of numbers")
        value = tuple(_float32(op, attr, v) for v in items)
    if attr.check is not None:
        complaint = attr.check(value)
        if complaint:
            raise ArchError(f"{op}(): attribute '{attr.name}' {complaint}, got {_show(value)}")
    return value


FLOAT32_MAX = 3.4028234663852886e38


def _float32(op: str, attr: Attr, v) -> float:
    """A float attribute becomes a parameter or buffer value of a float32 module: it must fit there."""
    if abs(v) > FLOAT32_MAX:
        raise ArchError(f"{op}(): attribute '{attr.name}' = {v:g} does not fit in a 32-bit float",
                        hint="float attributes must stay within about 3.4e38")
    return float(v)


def _show(v) -> str:
    """How a value reads in .arch source, never a Python repr. The front end's values (ops as values, closures,
    tensors) say it themselves through `label()` / `node`: duck-typed, so ops never import the front end."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if hasattr(v, "label"):
        return v.label()
    if isinstance(v, str):
        return v if v in PRECISIONS else f'"{v}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    if hasattr(v, "node"):
        return f"${v.node}"
    return repr(v)


# Common checks, so op modules state constraints declaratively.
def positive(v):
    vals = v if isinstance(v, tuple) else (v,)
    return None if all(x > 0 for x in vals) else "must be positive"


def non_negative(v):
    vals = v if isinstance(v, tuple) else (v,)
    return None if all(x >= 0 for x in vals) else "must be zero or more"


def probability(v):
    return None if 0.0 <= v < 1.0 else "must be in [0, 1)"


_REGISTRY: dict[str, OpSpec] = {}
_ALIASES: dict[str, str] = {}


def register(spec: OpSpec) -> OpSpec:
    for name in (spec.name, *spec.aliases):
        if name in _REGISTRY or name in _ALIASES:
            raise ValueError(f"op '{name}' registered twice")
    _REGISTRY[spec.name] = spec
    for alias in spec.aliases:
        _ALIASES[alias] = spec.name
    return spec


def op(name: str, *attrs: Attr, **facts) -> OpSpec:
    """Register an op: ``op("relu", shape=same, torch=...)``; returns the spec."""
    return register(OpSpec(name=name, attrs=tuple(attrs), **facts))


def get_op(name: str) -> OpSpec:
    _load_all()
    spec = _REGISTRY.get(name) or _REGISTRY.get(_ALIASES.get(name, ""))
    if spec is None:
        known = set(_REGISTRY) | set(_ALIASES)
        raise ArchError(f"unknown op '{name}'", hint=did_you_mean(name, known) or "run `archdsl ops` for the list")
    return spec


def has_op(name: str) -> bool:
    _load_all()
    return name in _REGISTRY or name in _ALIASES


def all_ops() -> list[OpSpec]:
    _load_all()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def user_op_names() -> set[str]:
    """Names (and aliases) an .arch file may call: every op that is not internal."""
    _load_all()
    return {n for n in set(_REGISTRY) | set(_ALIASES) if not get_op(n).internal}


_loaded = False


def _load_all() -> None:
    """Import every op module once; each registers its ops at import time."""
    global _loaded
    if _loaded:
        return
    import importlib
    import pkgutil

    import archdsl.ops as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name not in ("registry", "shapes") and not info.name.startswith("_"):
            importlib.import_module(f"archdsl.ops.{info.name}")
    _loaded = True  # only now: a failed import must not leave a silently partial registry
