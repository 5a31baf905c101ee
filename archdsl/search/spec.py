"""What a search asks for: the `search` section of an .arch file, with command-line overrides.

    search mixers over mnist1d {
      maximize accuracy(epochs = 20)
      minimize latency(batch = 1, device = cpu)
      constraint params < 50k
      trials = 60
    }
"""
from __future__ import annotations

from dataclasses import dataclass, field

from archdsl.errors import ArchError, Span, did_you_mean
from archdsl.frontend import ast as A

METRICS = {  # name -> (default direction, allowed arguments)
    "accuracy": ("maximize", {"epochs", "batch", "lr", "weight_decay", "optimizer", "warmup", "label_smoothing",
                              "clip", "device", "precision", "workers", "act_bits"}),  # see recipe.py
    "latency": ("minimize", {"batch", "device", "precision", "runs", "threads"}),
    "params": ("minimize", set()),
    "macs": ("minimize", set()),
    "size": ("minimize", set()),  # bytes of the weights, each at its node's precision (mixed-precision search)
    "memory": ("minimize", {"batch"}),
    "synflow": ("maximize", set()),
    "naswot": ("maximize", set()),
    "jacob_cov": ("maximize", set()),
    "grad_norm": ("maximize", set()),
}
SETTINGS = {"trials": int, "timeout": (int, float), "model": str, "seed": int, "sampler": str,
            "val_fraction": float, "jobs": int}


@dataclass(frozen=True)
class Arg:
    """What one argument of an objective (or one search setting) accepts: a type and a closed range, or a
    list of choices. `low_open`: the low bound itself is refused (a learning rate of 0)."""

    kind: type | tuple
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    low_open: bool = False

    def problem(self, value) -> str | None:
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        if isinstance(value, bool) or not isinstance(value, kinds):
            names = "a number" if float in kinds else "a whole number" if int in kinds else "a name"
            return f"is {_shown(value)}, expected {names}"
        if self.choices and value not in self.choices:
            return f"is {_shown(value)}, expected one of {', '.join(self.choices)}"
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return f"is {_shown(value)}, expected {'above' if self.low_open else 'at least'} {_shown(self.low)}"
        if self.high is not None and value > self.high:
            return f"is {_shown(value)}, expected at most {_shown(self.high)}"
        return None


def _shown(v) -> str:
    return f'"{v}"' if isinstance(v, str) else "a list" if isinstance(v, list) else str(v)


NUMBER = (int, float)
# Each objective argument's type and range, checked before the study starts (one row per argument; an
# argument allowed by METRICS without a row here is passed on unchecked).
ARG_RULES = {
    "accuracy": {"epochs": Arg(int, 1, 100_000), "batch": Arg(int, 1, 1 << 20), "lr": Arg(NUMBER, 0, low_open=True),
                 "weight_decay": Arg(NUMBER, 0)},
    "latency": {"batch": Arg(int, 1, 1 << 16), "device": Arg(str, choices=("cpu", "cuda")),
                "precision": Arg(str, choices=("fp32", "bf16", "fp16")), "runs": Arg(int, 1, 100_000),
                "threads": Arg(int, 1, 1024)},
    "memory": {"batch": Arg(int, 1, 1 << 20)},
}
SETTING_RULES = {"trials": Arg(int, 1), "timeout": Arg(NUMBER, 0, low_open=True), "jobs": Arg(int, 1),
                 "val_fraction": Arg(NUMBER, 0, 1, low_open=True), "sampler": Arg(str, choices=("evolution", "nsga2", "tpe", "random", "grid"))}


@dataclass
class Objective:
    metric: str
    direction: str
    args: dict = field(default_factory=dict)
    span: Span | None = None

    @property
    def key(self) -> str:
        return self.metric


@dataclass
class SearchSpec:
    name: str
    dataset: str
    dataset_args: tuple
    objectives: list
    constraints: list  # AST expressions, evaluated against the trial's metrics
    settings: dict
    span: Span | None = None
    dataset_kwargs: dict = field(default_factory=dict)  # images("folder", size = 32): {"size": 32}
    dataset_span: Span | None = None

    @property
    def recipe(self):
        """How trials train: accuracy(...)'s arguments, checked (recipe.py)."""
        from archdsl.search.recipe import from_args

        o = self.objective("accuracy")
        return from_args(o.args if o else {}, o.span if o else None)

    def objective(self, metric: str) -> Objective | None:
        return next((o for o in self.objectives if o.metric == metric), None)


def _const(program, expr):
    from archdsl.frontend.elaborate import Ctx, Elaborator, Frame
    from archdsl.frontend.choices import DefaultResolver
    from archdsl.frontend.values import CONSTANTS
    from archdsl.search.recipe import WORDS

    return Elaborator(program, DefaultResolver()).eval(expr, Frame(vars=dict(CONSTANTS, cpu="cpu", cuda="cuda",
                                                                                      **{w: w for w in WORDS})),
                                                       Ctx(refs={}))


def _objective(program, item: A.SearchItem) -> Objective:
    e = item.value
    name = e.func if isinstance(e, A.Call) else getattr(e, "id", None)
    if name not in METRICS:
        raise ArchError(f"unknown objective '{name}'", item.span,
                        hint=did_you_mean(str(name), METRICS) or f"objectives: {', '.join(METRICS)}")
    args = {}
    if isinstance(e, A.Call):
        if e.args:
            raise ArchError(f"{name}(...) takes named arguments, e.g. {name}(batch = 1)", e.span)
        allowed = METRICS[name][1]
        for k, v in e.kwargs.items():
            if k not in allowed:
                raise ArchError(f"{name}() has no argument '{k}'", e.span,
                                hint=did_you_mean(k, allowed) or f"it takes {', '.join(sorted(allowed)) or 'none'}")
            args[k] = _const(program, v)
            rule = ARG_RULES.get(name, {}).get(k)
            problem = rule.problem(args[k]) if rule else None
            if problem:
                raise ArchError(f"{name}({k} = ...) {problem}", getattr(v, "span", None) or e.span)
    if name == "accuracy":
        from archdsl.search.recipe import from_args

        from_args(args, e.span)  # a bad training argument is an error now, with its line
    return Objective(name, item.kind, args, item.span)


def constraint_names(expr) -> set:
    """The names an expression reads (`params < 50k` -> {params})."""
    if isinstance(expr, A.Name):
        return {expr.id}
    out = set()
    for v in vars(expr).values():
        if isinstance(v, A.Node):
            out |= constraint_names(v)
        elif isinstance(v, list):
            for x in v:
                if isinstance(x, A.Node):
                    out |= constraint_names(x)
    return out


def _check_constraint(program, expr) -> None:
    """Evaluate a constraint once with every metric at 1: `params < "x"` or `params + 1` (not a
    comparison) fails here, with its line, instead of in every trial."""
    from archdsl.frontend.elaborate import Ctx, Elaborator, Frame
    from archdsl.frontend.choices import DefaultResolver
    from archdsl.frontend.values import CONSTANTS

    env = dict(CONSTANTS, **{m: 1.0 for m in (*METRICS, "latency_ms")})
    value = Elaborator(program, DefaultResolver()).eval(expr, Frame(vars=env), Ctx(refs={}))
    if not isinstance(value, bool):
        raise ArchError(f"a constraint must be a comparison such as `params < 50k` (this one gives {_shown(value)})",
                        expr.span)


def load_spec(program: A.Program, search: str | None = None, overrides: dict | None = None) -> SearchSpec:
    """The file's search section (the named one, or the only one), with `overrides` of settings."""
    if not program.searches:
        raise ArchError(f"{program.file} has no search section",
                        hint="add `search NAME over mnist1d { maximize accuracy(epochs = 10) ... }`")
    if search is None:
        s = program.searches[-1]
    else:
        s = next((x for x in program.searches if x.name == search), None)
        if s is None:
            raise ArchError(f"no search '{search}' in {program.file}",
                            hint=did_you_mean(search, [x.name for x in program.searches]))
    ds_name, ds_args, ds_kwargs, ds_span = "mnist1d", (), {}, s.span
    if s.dataset is not None:
        if isinstance(s.dataset, A.Name):
            ds_name, ds_span = s.dataset.id, s.dataset.span
        elif isinstance(s.dataset, A.Call):
            ds_name, ds_span = s.dataset.func, s.dataset.span
            ds_args = tuple(_const(program, a) for a in s.dataset.args)
            ds_kwargs = {k: _const(program, v) for k, v in s.dataset.kwargs.items()}
            if ds_name in ("npz", "images") and ds_args and isinstance(ds_args[0], str) \
                    and not program.file.startswith("<"):
                # a data path is relative to the .arch file, like an import
                from pathlib import Path

                ds_args = (str((Path(program.file).parent / ds_args[0]).resolve()),) + ds_args[1:]
        else:
            raise ArchError("`over` takes a data set: mnist1d, digits, npz(\"file.npz\") or images(\"folder\")",
                            s.dataset.span)
    objectives, constraints, settings = [], [], {}
    for item in s.items:
        if item.kind in ("maximize", "minimize"):
            objectives.append(_objective(program, item))
        elif item.kind == "constraint":
            constraints.append(item.value)
        elif item.kind == "setting":
            if item.name not in SETTINGS:
                raise ArchError(f"unknown search setting '{item.name}'", item.span,
                                hint=did_you_mean(item.name, SETTINGS) or f"settings: {', '.join(SETTINGS)}")
            value = _const(program, item.value) if not isinstance(item.value, A.Name) else item.value.id
            if not isinstance(value, SETTINGS[item.name]) or isinstance(value, bool):
                raise ArchError(f"search setting {item.name} = {value!r} has the wrong type", item.span)
            rule = SETTING_RULES.get(item.name)
            problem = rule.problem(value) if rule else None
            if problem:
                raise ArchError(f"search setting {item.name} {problem}", item.span)
            settings[item.name] = value
        elif item.kind == "annotation":
            raise ArchError("annotations in a search section are not supported; put @precision(choice(...)) on "
                            "the model or a block instead", item.span)
    known = set(METRICS) | {"latency_ms"}
    for c in constraints:
        unknown = constraint_names(c) - known
        if unknown:
            name = sorted(unknown)[0]
            raise ArchError(f"constraint uses '{name}', which is not a metric", c.span,
                            hint=did_you_mean(name, known) or f"metrics: {', '.join(sorted(known))}")
        _check_constraint(program, c)
    if not objectives:
        raise ArchError(f"search '{s.name}' declares no objective", s.span,
                        hint="add e.g. `maximize accuracy(epochs = 10)` and `minimize latency(batch = 1)`")
    names = [o.metric for o in objectives]
    if len(set(names)) != len(names):
        raise ArchError(f"search '{s.name}' lists an objective twice: {', '.join(names)}", s.span)
    settings.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return SearchSpec(s.name, ds_name, ds_args, objectives, constraints, settings, s.span, ds_kwargs, ds_span)


def override_program(program: A.Program, search: str | None, objectives: list[str], constraints: list[str]) -> None:
    """Apply --objective / --constraint from the command line to the program's search section, parsing them
    with the .arch grammar (so their errors point into the option text)."""
    if not objectives and not constraints:
        return
    from archdsl.frontend.parse import parse_text

    if not program.searches:
        program.searches.append(A.Search(Span(program.file, 1, 1), "search", None, []))
    target = program.searches[-1] if search is None else next((s for s in program.searches if s.name == search),
                                                                program.searches[-1])
    extra = []
    for i, text in enumerate(objectives):
        (s,) = parse_text(f"search o {{ {text} }}", file=f"<--objective {i + 1}>")
        extra += s.items
    if objectives:
        target.items = [it for it in target.items if it.kind not in ("maximize", "minimize")] + extra
    for i, text in enumerate(constraints):
        (s,) = parse_text(f"search c {{ constraint {text} }}", file=f"<--constraint {i + 1}>")
        target.items += s.items
