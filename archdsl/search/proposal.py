"""Candidates checked before they become trials: the evolution sampler's `propose` callback for a space.

The callback builds the architecture the sampler's choices describe (the same build a trial does), and answers
with the choices met, the IR hash and a `known(study)` callable, or None when the candidate could not be trained
anyway: a shape error or a constraint on a static metric (params, MACs, size, memory) it breaks. Trials are then
not spent on them. `known(study)` gives the objectives that cost nothing to know before training, {objective
index: value}: params, MACs, size, memory from the IR, and latency timed as a trial times it (the deploy graph,
paired with the reference workload, in the study's units) - so the sampler can rank candidates before it trains
one.
"""
from __future__ import annotations

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

import archdsl
from archdsl.errors import ArchError
from archdsl.ir.printer import ir_hash
from archdsl.search.trial_choices import TrialResolver
from archdsl.search.latency import measure_paired
from archdsl.search.trial import _deploy, latency_args, static_metrics, violated

RUNS = 15  # forwards timed per candidate: enough for a ranking, a trial times its own winner again


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

    def __call__(self, choose):
        suggestions = _Suggestions(choose)
        try:
            G = archdsl.build(self.program, self.model, resolver=TrialResolver(suggestions, self.fixed))
        except ArchError:
            return None
        metrics = static_metrics(G)
        if violated(self.program, self.spec, metrics):
            return None
        return suggestions.values, ir_hash(G), lambda study: self.known(G, metrics, study)

    def known(self, G, metrics: dict, study) -> dict:
        out = {}
        for i, o in enumerate(self.spec.objectives):
            if o.metric == "latency":
                out[i] = self._latency(G, study)
            elif o.metric in metrics and o.metric != "accuracy":
                out[i] = float(metrics[o.metric])
        return out

    def _latency(self, G, study) -> float:
        args = latency_args(self.spec)
        try:
            module = _deploy(G, archdsl.compile(G), args["act_bits"])
        except ArchError:
            return float("inf")  # not compilable: the trial will say why; never preferred
        timing = measure_paired(module, G.nodes[G.graph["input"]]["shape"], batch=args["batch"],
                                device=args["device"], precision=args["precision"], runs=min(RUNS, args["runs"]),
                                n_threads=args["threads"])
        unit = study.user_attrs.get("latency_reference_ms") or timing["reference_ms"]
        return timing["ratio"] * unit
