"""The Optuna side of search constructs: every choice/int/float met during elaboration becomes a trial
suggestion under its stable name (define-by-run, so conditional spaces need nothing special)."""
from __future__ import annotations

from archdsl.frontend.choices import Dim, Resolver


class TrialResolver(Resolver):
    """Asks an Optuna trial for each dimension; choices are suggested by their .arch labels."""

    def __init__(self, trial, fixed: dict | None = None):
        super().__init__(fixed)  # --set values: pinned, not searched
        self.trial = trial

    def pick(self, dim: Dim):
        if dim.kind == "choice":
            categories = _categories(dim.labels)
            label = self.trial.suggest_categorical(dim.name, categories)
            return dim.options[categories.index(label)]
        if dim.kind == "int":
            return self.trial.suggest_int(dim.name, dim.low, dim.high, step=dim.step or 1)
        return self.trial.suggest_float(dim.name, dim.low, dim.high, log=dim.log)


def _categories(labels) -> list:
    """Optuna categories for a choice: its labels, made unique where two options read the same (two block
    literals are both labelled `{...}`): `{...} #2`. Otherwise the sampler could only ever pick the first."""
    labels = list(labels)
    return [label if labels.count(label) == 1 else f"{label} #{i + 1}" for i, label in enumerate(labels)]


class RandomResolver(Resolver):
    """Uniform random values (for `archdsl check --samples N`), --set values pinned."""

    def __init__(self, rng, fixed: dict | None = None):
        super().__init__(fixed)
        self.rng = rng

    def pick(self, dim: Dim):
        if dim.kind == "choice":
            return dim.options[self.rng.randrange(len(dim.options))]
        if dim.kind == "int":
            step = dim.step or 1
            return dim.low + step * self.rng.randrange((dim.high - dim.low) // step + 1)
        if dim.log:
            import math

            return math.exp(self.rng.uniform(math.log(dim.low), math.log(dim.high)))
        return self.rng.uniform(dim.low, dim.high)
