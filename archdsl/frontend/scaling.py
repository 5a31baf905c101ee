"""`@scale(...)` before a model: build it scaled to a MAC budget by a named rule.

A rule splits the growth of the MACs by a factor s between depth, width and resolution: with flop shares
(e_d, e_w, e_r) summing to 1, depths are multiplied by s^e_d, widths by s^(e_w/2) and resolutions by
s^(e_r/2) (MACs grow linearly in depth and quadratically in width and resolution), so d * w^2 * r^2 = s.
The values are rounded as pycls's scaler does (facebookresearch/pycls, pycls/models/scaler.py, scale_model):
depths to whole numbers (at least 1), widths to a multiple of 8, resolutions to a multiple of 4. A rounded
value only grows with s, and so do the MACs of a conv/linear network, so one search over s finds the largest
model whose statically counted MACs are at most the budget; the next larger step along the rule is over it.
(pycls's fast type also scales group widths; archdsl has no such dimension, so it is left out.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from archdsl.errors import ArchError, Span, did_you_mean
from archdsl.frontend import ast as A
from archdsl.frontend.values import CONSTANTS, is_search_call, show
from archdsl.ir.graph import totals

# EfficientNet's depth, width and resolution bases alpha = 1.2, beta = 1.1, gamma = 1.15 (Tan & Le 2019, sec. 4)
_EFFNET = (math.log(1.2), 2 * math.log(1.1), 2 * math.log(1.15))

# name -> flop shares (depth, width, resolution)
RULES = {
    # Dollar, Singh, Girshick, "Fast and Accurate Model Scaling" (CVPR 2021), Table 4: e_w = alpha,
    # e_d = e_r = (1 - alpha) / 2 with alpha = 0.8 (pycls: scale type "d1_w8_g8_r1")
    "fast": (0.1, 0.8, 0.1),
    "uniform": (1 / 3, 1 / 3, 1 / 3),  # the same paper's alpha = 1/3 ("dwr")
    "compound": tuple(x / sum(_EFFNET) for x in _EFFNET),  # d = 1.2^phi, w = 1.1^phi, r = 1.15^phi
    "width": (0.0, 1.0, 0.0),
    "depth": (1.0, 0.0, 0.0),
    "resolution": (0.0, 0.0, 1.0),
}
RULE_NAMES = {**CONSTANTS, **{r: r for r in RULES}}  # `@scale(rule = fast)`: a rule's name reads as a string
KINDS = ("depth", "width", "resolution")
ARGS = {"macs", "rule", "multiple", "res_multiple"} | set(KINDS)
S_MIN, S_MAX = 1e-40, 2.0 ** 60
STEPS = 80  # bisection steps on log s: far below the gap between two rounding steps


@dataclass
class ScaleSpec:
    budget: int | float
    rule: str
    params: dict  # model parameter -> "depth" | "width" | "resolution"
    base: dict  # model parameter -> its unscaled value (int or list of ints)
    multiple: int
    res_multiple: int
    span: Span  # of the budget: where an unmet budget is reported


def exponents(rule: str, kinds) -> dict:
    """kind -> exponent of s. Kinds the model does not name drop out and the rest share all of the growth
    (pycls normalises its weights over the dimensions a scale type names: "d1_w8" is depth s^(1/9))."""
    shares = dict(zip(KINDS, RULES[rule]))
    total = sum(shares[k] for k in set(kinds))
    return {k: shares[k] / total / (1 if k == "depth" else 2) for k in KINDS if k in kinds}


def scaled(spec: ScaleSpec, s: float) -> dict:
    """The model parameters at scale s (rounded)."""
    exps = exponents(spec.rule, spec.params.values())

    def one(kind, v):
        m = s ** exps[kind]
        if kind == "depth":
            return max(1, round(v * m)) if v > 0 else 0
        q = spec.multiple if kind == "width" else spec.res_multiple
        return max(q, round(v * m / q) * q)

    return {p: [one(kind, v) for v in spec.base[p]] if isinstance(spec.base[p], list) else one(kind, spec.base[p])
            for p, kind in spec.params.items()}


def read_spec(ann: A.Annotation, model: A.Definition, evaluate, resolver) -> ScaleSpec:
    """The `@scale(...)` annotation checked: `evaluate(expr, name)` evaluates one of its values, a search
    construct taking `name` (`scale.macs`); `--set scale.macs=...` overrides a plain value."""
    if ann.args:
        raise ArchError("@scale takes named arguments only", ann.span,
                        hint="e.g. @scale(macs = 200k, rule = fast, width = dim, depth = depth)")
    for key in ann.kwargs:
        if key not in ARGS:
            raise ArchError(f"@scale has no argument '{key}'", ann.span,
                            hint=did_you_mean(key, ARGS) or f"it takes {', '.join(sorted(ARGS))}")

    def value(key, default):
        expr, name = ann.kwargs.get(key), f"scale.{key}"
        if name in resolver.overrides and (expr is None or not is_search_call(expr)):
            return resolver.take(name)
        return default if expr is None else evaluate(expr, name)

    if "macs" not in ann.kwargs:
        raise ArchError("@scale needs a budget: macs = N", ann.span, hint="e.g. @scale(macs = 2M, width = dim)")
    budget = value("macs", None)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0:
        raise ArchError(f"@scale(macs = ...) must be a positive number, got {show(budget)}", ann.span)
    named = ann.kwargs.get("rule")
    unknown = isinstance(named, A.Name) and named.id not in RULES and "scale.rule" not in resolver.overrides
    rule = named.id if unknown else value("rule", "fast")
    if rule not in RULES:
        raise ArchError(f"@scale: unknown rule {show(rule)}", ann.kwargs.get("rule", ann).span,
                        hint=did_you_mean(str(rule), RULES) or f"rules: {', '.join(RULES)}")
    multiple, res_multiple = value("multiple", 8), value("res_multiple", 4)
    for key, q in (("multiple", multiple), ("res_multiple", res_multiple)):
        if isinstance(q, bool) or not isinstance(q, int) or q < 1:
            raise ArchError(f"@scale({key} = ...) must be a whole number >= 1, got {show(q)}", ann.span)
    params = _named_params(ann, model)
    if not any(RULES[rule][KINDS.index(k)] for k in params.values()):
        raise ArchError(f"@scale: rule '{rule}' grows only {', '.join(k for k, e in zip(KINDS, RULES[rule]) if e)}, "
                        f"which names no model parameter here", ann.span,
                        hint="name the parameter it scales, e.g. width = dim, or pick another rule")
    base = {p.name: _base(p, params[p.name], evaluate, resolver) for p in model.params if p.name in params}
    budget = int(budget) if float(budget).is_integer() else float(budget)
    return ScaleSpec(budget, rule, params, base, multiple, res_multiple, ann.kwargs["macs"].span)


def _named_params(ann: A.Annotation, model: A.Definition) -> dict:
    known = [p.name for p in model.params]
    params = {}
    for kind in KINDS:
        expr = ann.kwargs.get(kind)
        if expr is None:
            continue
        names = expr.items if isinstance(expr, A.ListExpr) else [expr]
        for n in names:
            if not isinstance(n, A.Name):
                raise ArchError(f"@scale({kind} = ...) names model parameters, e.g. {kind} = dim or "
                                f"{kind} = [dims, hidden]", n.span)
            if n.id not in known:
                raise ArchError(f"@scale: model '{model.name}' has no parameter '{n.id}'", n.span,
                                hint=did_you_mean(n.id, known) or f"its parameters: {', '.join(known) or 'none'}")
            if n.id in params:
                raise ArchError(f"@scale: parameter '{n.id}' is named twice", n.span,
                                hint="each parameter scales along one of depth, width, resolution")
            params[n.id] = kind
    if not params:
        raise ArchError("@scale names no parameter to scale", ann.span,
                        hint="add width = ..., depth = ... or resolution = ... (model parameters)")
    return params


def _base(param: A.Param, kind: str, evaluate, resolver):
    if param.name in resolver.overrides:
        v = resolver.take(param.name)
    elif param.default is None or is_search_call(param.default):
        raise ArchError(f"@scale: parameter '{param.name}' needs a plain default to scale from", param.span,
                        hint="give it a number or a list of numbers (search the budget or the rule instead)")
    else:
        v = evaluate(param.default, param.name)
    items = v if isinstance(v, list) else [v]
    least = 0 if kind == "depth" else 1
    if not items or any(isinstance(x, bool) or not isinstance(x, int) or x < least for x in items):
        raise ArchError(f"@scale({kind} = {param.name}): '{param.name}' must be a whole number >= {least} or a "
                        f"list of them, got {show(v)}", param.span)
    return list(v) if isinstance(v, list) else v


def build_scaled(model: A.Definition, resolver, elaborator, frame_type, ctx_type):
    """`model` built once plainly, or, under `@scale(...)`, at the largest scale within the budget.
    `elaborator()` makes an Elaborator on `resolver`: every build reuses it, so a choice (a patch size) keeps
    its value. The elaborator's Frame and Ctx types come in as arguments (elaborate.py imports this module)."""
    def make(m):
        return elaborator().build(m)

    def evaluate(expr, name):  # rule names read as strings; a search construct takes the name `scale.<arg>`
        return elaborator().eval(expr, frame_type(vars=RULE_NAMES), ctx_type(refs={}, binding=name))

    anns = [a for a in model.annotations if a.name == "scale"]
    if not anns:
        return make(model)
    if len(anns) > 1:
        raise ArchError("a model takes one @scale", anns[1].span)
    model = replace(model, annotations=[a for a in model.annotations if a.name != "scale"])
    spec = read_spec(anns[0], model, evaluate, resolver)
    return Solver(spec, resolver, lambda: make(model)).solve()


class Solver:
    """A search over log s for the largest rounded configuration whose MACs are within the budget."""

    def __init__(self, spec: ScaleSpec, resolver, make):
        self.spec, self.resolver, self.make = spec, resolver, make
        self.graphs: dict = {}  # configuration -> graph (rounding makes long runs of s give one model)

    def key(self, s: float) -> tuple:
        return tuple((p, tuple(v) if isinstance(v, list) else v) for p, v in scaled(self.spec, s).items())

    def graph(self, s: float):
        k = self.key(s)
        if k not in self.graphs:
            self.resolver.overrides.update(scaled(self.spec, s))
            self.graphs[k] = self.make()
        return self.graphs[k]

    def macs(self, s: float) -> int:
        return totals(self.graph(s))["macs"]

    def solve(self):
        spec, budget = self.spec, self.spec.budget
        if self.key(S_MIN) == self.key(S_MAX):
            raise ArchError(f"@scale: rule '{spec.rule}' leaves every named parameter as it is", spec.span)
        lo, hi = 1.0, 1.0
        if not self._over(1.0):
            while not self._over(hi):
                lo, hi = hi, hi * 2
                if hi > S_MAX:
                    raise ArchError(f"@scale: the budget {_n(budget)} MACs is never reached", spec.span)
        else:
            s = 1.0  # over the budget: halve until under it, or until nothing shrinks any more
            while True:
                if self.key(s) == self.key(S_MIN):
                    raise self._unmet(s)
                if not self._over(s / 2):
                    lo, hi = s / 2, s
                    break
                s = s / 2
        for _ in range(STEPS):
            mid = math.sqrt(lo * hi)
            if self.key(mid) in (self.key(lo), self.key(hi)):  # no build needed: which side is known
                lo, hi = (mid, hi) if self.key(mid) == self.key(lo) else (lo, mid)
            elif self.macs(mid) <= budget:
                lo = mid
            else:
                hi = mid
        G = self.graph(lo)
        self.resolver.overrides.update(scaled(spec, lo))
        G.graph["scaling"] = {"rule": spec.rule, "budget": budget, "s": lo, "values": scaled(spec, lo),
                              "macs": self.macs(lo), "next": {"values": scaled(spec, hi), "macs": self.macs(hi)}}
        return G

    def _over(self, s: float) -> bool:
        try:
            return self.macs(s) > self.spec.budget
        except ArchError as e:
            if s >= 1:  # on the way up (a depth past the node limit): no model of the rule reaches the budget
                values = ", ".join(f"{p} = {show(v)}" for p, v in scaled(self.spec, s).items())
                raise ArchError(f"@scale: on the way to {_n(self.spec.budget)} MACs, at {values}, the model does "
                                f"not build: {e.message}", self.spec.span, hint="lower macs") from None
            raise self._unmet(s, e) from None  # too small to build (a feature map under the kernel)

    def _unmet(self, s: float, cause: ArchError | None = None) -> ArchError:
        values = ", ".join(f"{p} = {show(v)}" for p, v in scaled(self.spec, s).items())
        if cause is not None:
            why = f"at {values} the model does not build: {cause.message}"
        else:
            why = f"its smallest model ({values}) has {_n(self.macs(s))} MACs"
        return ArchError(f"@scale: the budget of {_n(self.spec.budget)} MACs cannot be met with rule "
                         f"'{self.spec.rule}': {why}", self.spec.span,
                         hint="raise macs, or scale more parameters (a smaller base, more named widths)")


def _n(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:,.0f}"


def with_scale(program: A.Program, model: str | None, text: str) -> A.Program:
    """`program` with `@scale(TEXT)` before `model`, replacing one the file has (the command line's
    `--scale "macs = 2M, width = dim"`)."""
    from archdsl.frontend.parse import parse_expr

    call = parse_expr(f"scale({text})", file="<--scale>")
    if not isinstance(call, A.Call):
        raise ArchError(f"--scale takes the arguments of @scale(...), got {text!r}",
                        hint='e.g. --scale "macs = 2M, rule = fast, width = dims, depth = depths"')
    d = program.model(model)
    ann = A.Annotation(call.span, "scale", call.args, call.kwargs)
    d = replace(d, annotations=[a for a in d.annotations if a.name != "scale"] + [ann])
    return replace(program, models={**program.models, d.name: d})
