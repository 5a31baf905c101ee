"""Candidates checked before they become trials: the evolution sampler's `propose` callback for a space.

The callback builds the architecture the sampler's choices describe (the same build a trial does), and answers
with the choices met and the IR hash, or None when the candidate could not be trained anyway: a shape error or
a constraint on a static metric (params, MACs, size, memory) it breaks. Trials are then not spent on them.
"""
from __future__ import annotations

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

import archdsl
from archdsl.errors import ArchError
from archdsl.ir.printer import ir_hash
from archdsl.search.trial_choices import TrialResolver
from archdsl.search.trial import static_metrics, violated


class _Suggestions:
    """Stands in for an Optuna trial inside TrialResolver: each suggestion goes to `choose(name, dist)`."""

    def __init__(self, choose):
        self.choose, self.values = choose, {}

    def _ask(self, name, dist):
        self.values[name] = self.choose(name, dist)
        return self.values[name]

    def suggest_categorical(self, name, choices):
        return self._ask(name, CategoricalDistribution(choices))

    def suggest_int(self, name, low, high, step=1):
        return self._ask(name, IntDistribution(low, high, step=step))

    def suggest_float(self, name, low, high, log=False):
        return self._ask(name, FloatDistribution(low, high, log=log))


class ArchProposer:
    def __init__(self, program, spec, fixed: dict | None = None):
        self.program, self.spec, self.fixed = program, spec, fixed or {}
        self.model = spec.settings.get("model")

    def __call__(self, choose) -> tuple[dict, str] | None:
        suggestions = _Suggestions(choose)
        try:
            G = archdsl.build(self.program, self.model, resolver=TrialResolver(suggestions, self.fixed))
        except ArchError:
            return None
        if violated(self.program, self.spec, static_metrics(G)):
            return None
        return suggestions.values, ir_hash(G)
