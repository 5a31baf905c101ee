"""Search constructs: choice / int / float, and the resolvers that pick their values.

Elaboration asks a resolver for every search construct it meets (define-by-run), by a stable name. The
DefaultResolver takes the default or a caller's override (``--set k=5``); archdsl/search plugs an Optuna
trial into the same interface.
"""
from __future__ import annotations

from dataclasses import dataclass

from archdsl.errors import ArchError, Span, did_you_mean
from archdsl.frontend.values import OpValue, show


@dataclass
class Dim:
    """One search dimension as met during elaboration."""

    name: str
    kind: str  # "choice" | "int" | "float"
    options: tuple = ()  # choice values
    labels: tuple = ()  # choice values as .arch text (stable, Optuna-friendly categories)
    low: float = 0
    high: float = 0
    step: float | None = None
    log: bool = False
    default: object = None
    span: Span | None = None

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice({', '.join(self.labels)})"
        if self.kind == "int":
            return f"int({self.low}, {self.high}" + (f", step={self.step}" if self.step not in (None, 1) else "") + ")"
        return f"float({self.low}, {self.high}" + (", log=true" if self.log else "") + ")"

    def same_as(self, other: "Dim") -> bool:
        return self.describe() == other.describe()


class Resolver:
    """Base: remembers every dimension met and the value chosen, by name. Values given by the caller
    (``--set name=value``, ``compile(..., name=value)``) are pinned here, for every kind of resolver: a pinned
    dimension is checked against its range and never handed to `pick`."""

    def __init__(self, overrides: dict | None = None):
        self.dims: dict[str, Dim] = {}
        self.values: dict[str, object] = {}
        self.chosen: dict[str, int] = {}  # choice name -> index of the option taken
        self.overrides = dict(overrides or {})
        self.used: set[str] = set()  # overrides actually met (a model parameter or a dimension)

    def take(self, name: str):
        """The caller's value for `name` (also for plain model parameters, which the elaborator asks for)."""
        self.used.add(name)
        return self.overrides[name]

    def resolve(self, dim: Dim):
        known = self.dims.get(dim.name)
        if known is not None:
            if not known.same_as(dim):
                raise ArchError(f"search dimension '{dim.name}' is declared twice with different ranges: "
                                f"{known.describe()} at {known.span} and {dim.describe()}", dim.span,
                                hint="give one of them another name= or make the ranges equal to share it")
            if dim.kind == "choice":
                # the same option, evaluated where this instance stands (`linear(dim)` with its own dim)
                return dim.options[self.chosen[dim.name]]
            return self.values[dim.name]
        self.dims[dim.name] = dim
        value = check_value(dim, self.take(dim.name)) if dim.name in self.overrides else self.pick(dim)
        self.values[dim.name] = value
        if dim.kind == "choice":
            self.chosen[dim.name] = _option_index(dim, value)
        return value

    def pick(self, dim: Dim):  # pragma: no cover - overridden
        raise NotImplementedError

    def finish(self) -> None:
        """Called after elaboration; complain about anything asked for that never came up."""


class DefaultResolver(Resolver):
    """Defaults, or the caller's overrides (``--set name=value`` / ``compile(..., name=value)``)."""

    def pick(self, dim: Dim):
        return dim.default

    def finish(self) -> None:
        unused = [k for k in self.overrides if k not in self.used]
        if unused:
            known = sorted(set(self.dims) | self.used)
            name = unused[0]
            raise ArchError(f"--set {name}: no model parameter or search choice is called '{name}'",
                            hint=did_you_mean(name, known) or (f"known names: {', '.join(known)}" if known
                                                               else "this model has no parameters"))


def _option_index(dim: Dim, value) -> int:
    for i, opt in enumerate(dim.options):
        if opt is value or opt == value:
            return i
    raise ArchError(f"internal: value {show(value)} is not an option of '{dim.name}'", dim.span)


def check_value(dim: Dim, value):
    """An override or a sampled value, checked against the dimension; returns the value to use."""
    if dim.kind == "choice":
        for opt, label in zip(dim.options, dim.labels):
            if value == opt or (isinstance(value, str) and value == label) or \
                    (isinstance(value, OpValue) and isinstance(opt, OpValue) and value.label() == opt.label()):
                return opt
        raise ArchError(f"{show(value)} is not one of the choices for '{dim.name}': {', '.join(dim.labels)}",
                        dim.span, hint="pick one of the listed values, or widen the choice in the .arch file")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArchError(f"'{dim.name}' takes a number in [{dim.low}, {dim.high}], got {show(value)}", dim.span)
    if not dim.low <= value <= dim.high:
        raise ArchError(f"{show(value)} is outside the range of '{dim.name}': [{dim.low}, {dim.high}]", dim.span)
    if dim.kind == "int":
        if value != int(value) or (dim.step and (value - dim.low) % dim.step):
            raise ArchError(f"'{dim.name}' takes integers from {dim.low} in steps of {dim.step or 1}, "
                            f"got {show(value)}", dim.span)
        return int(value)
    return float(value)


def make_dim(func: str, name: str, args: list, kwargs: dict, labels: list[str], span: Span) -> Dim:
    """Build the Dim for ``choice(...)``, ``int(lo, hi[, step])`` or ``float(lo, hi[, log])``."""
    allowed = {"choice": {"name", "default"}, "int": {"name", "default", "step"},
               "float": {"name", "default", "log"}}[func]
    for key in kwargs:
        if key not in allowed:
            raise ArchError(f"{func}() has no argument '{key}'", span, hint=f"it takes {', '.join(sorted(allowed))}")
    if func == "choice":
        if not args:
            raise ArchError("choice() needs at least one option", span)
        default = kwargs.get("default", args[0])
        dim = Dim(name, "choice", tuple(args), tuple(labels), default=default, span=span)
        return Dim(**{**dim.__dict__, "default": check_value(dim, default)})
    if len(args) not in (2, 3):
        raise ArchError(f"{func}() takes a low and a high bound", span, hint=f"e.g. {func}(1, 4)")
    low, high = args[0], args[1]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low > high:
        raise ArchError(f"{func}({show(low)}, {show(high)}): bounds must be numbers with low <= high", span)
    if func == "int":
        step = args[2] if len(args) == 3 else kwargs.get("step", 1)
        if any(v != int(v) for v in (low, high, step)) or step <= 0:
            raise ArchError(f"int() bounds and step must be integers (step > 0), got {show(args)}", span)
        dim = Dim(name, "int", low=int(low), high=int(high), step=int(step), span=span)
    else:
        log = args[2] if len(args) == 3 else kwargs.get("log", False)
        if log and low <= 0:
            raise ArchError(f"float(..., log=true) needs a positive low bound, got {show(low)}", span)
        dim = Dim(name, "float", low=float(low), high=float(high), log=bool(log), span=span)
    default = kwargs.get("default")
    if default is None:
        default = dim.low  # the first value of the range, as for choice()
    return Dim(**{**dim.__dict__, "default": check_value(dim, default)})
