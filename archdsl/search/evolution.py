"""Regularized (aging) evolution as an Optuna sampler, for conditional, define-by-run architecture spaces and
one or several objectives (Real et al. 2019, "Regularized Evolution for Image Classifier Architecture Search",
with NSGA-II's rank and crowding distance standing in for a single fitness when there are several objectives).

A trial's choices are planned once, when the trial starts (`before_trial`):
- warm-up: until `warmup` trials are complete, every choice is drawn at random;
- then a tournament: `tournament` members drawn from the `population` most recently completed trials, the one
  with the best non-dominated rank (ties: the largest crowding distance) is the parent, and the child changes
  exactly ONE of the parent's choices. Every other choice the child meets is inherited from the parent when the
  parent had it, and drawn at random when it did not (a choice that only exists because of the mutation, e.g.
  the kernel of a block that the mutated depth adds).

With a `propose` callback (the architecture-aware mode archdsl uses) the plan is checked before the trial
runs: the callback builds the candidate, returns the choices it met and its IR hash, or None when it is
infeasible before training (a shape error, a static constraint such as params < 50k). Candidates whose hash
was already proposed or evaluated in the study, and infeasible ones, are redrawn (up to `attempts` times), so
the budget is not spent on duplicates. Without a callback, choices are planned lazily as they are suggested.

When the callback also says what a candidate's objectives known before training are (latency, params, MACs:
`proposal.ArchProposer`), the sampler drafts `candidates` children and trains the one with the largest
predicted hypervolume gain over the completed trials: its known objectives as measured, the trained ones
(accuracy) predicted at its parent's value plus `optimism` (a relative margin: one point at 97 %, so a child
a little slower than its parent is still worth a try where no trial is that accurate yet). A child predicted
to be dominated - slower than a completed trial that is already more accurate than the child is likely to be
- is not trained while another child would move the front; when none would, one is taken at random
(exploration). The predicted gain is kept on the trial (system attribute `archdsl:predicted_gain`).

The plan is kept on the trial (system attribute), so the sampler holds no state of its own: a resumed study or
another worker on the same storage sees every plan, and a worker never re-proposes what another is training.
"""
from __future__ import annotations

import json
import math
import threading
from typing import Callable

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler

PLAN = "archdsl:plan"        # the planned choices of a trial (JSON), when planned with `propose`
PARENT = "archdsl:parent"    # the trial number of its parent (absent in the warm-up)
MUTATED = "archdsl:mutated"  # the choice the child changed
HASH = "archdsl:ir_hash"     # the IR hash of the planned architecture
GAIN = "archdsl:predicted_gain"  # the hypervolume gain the sampler predicted for it (ranked candidates only)

Choose = Callable[[str, object], object]


# ----- ranking (minimised losses, one row per trial)
def nondominated_ranks(losses: np.ndarray) -> np.ndarray:
    """0 for the Pareto front, 1 for the front once that is removed, and so on."""
    n = len(losses)
    ranks = np.full(n, -1)
    left = set(range(n))
    rank = 0
    while left:
        front = [i for i in left if not any(_dominates(losses[j], losses[i]) for j in left if j != i)]
        for i in front:
            ranks[i] = rank
        left -= set(front)
        rank += 1
    return ranks


def _dominates(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all(a <= b) and np.any(a < b))


def crowding(losses: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance within one front: the boundary points are infinitely far."""
    n, m = losses.shape
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, math.inf)
    for j in range(m):
        order = np.argsort(losses[:, j], kind="stable")
        span = losses[order[-1], j] - losses[order[0], j]
        dist[order[0]] = dist[order[-1]] = math.inf
        if span > 0:
            dist[order[1:-1]] += (losses[order[2:], j] - losses[order[:-2], j]) / span
    return dist


def fitness_order(losses: np.ndarray) -> np.ndarray:
    """Each row's place when sorted by (rank, -crowding): 0 is the fittest."""
    ranks = nondominated_ranks(losses)
    crowd = np.zeros(len(losses))
    for r in set(ranks.tolist()):
        members = np.flatnonzero(ranks == r)
        crowd[members] = crowding(losses[members])
    keys = sorted(range(len(losses)), key=lambda i: (ranks[i], -crowd[i]))
    place = np.empty(len(losses), dtype=int)
    place[keys] = np.arange(len(losses))
    return place


def _signs(study) -> np.ndarray:
    """Multiply objective values by these to minimise all of them."""
    return np.array([-1.0 if d == optuna.study.StudyDirection.MAXIMIZE else 1.0 for d in study.directions])


def _hv(losses: np.ndarray, reference: np.ndarray) -> float:
    """Hypervolume of the minimised `losses` up to `reference` (Optuna's WFG); 0 for none inside it."""
    from optuna._hypervolume import compute_hypervolume

    pts = losses[np.all(losses < reference, axis=1)] if len(losses) else losses
    return float(compute_hypervolume(pts, reference)) if len(pts) else 0.0


# ----- drawing and mutating one value
def draw(dist, rng: np.random.Generator):
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[rng.integers(len(dist.choices))]
    if isinstance(dist, IntDistribution):
        return int(dist.low + dist.step * rng.integers((dist.high - dist.low) // dist.step + 1))
    if dist.log:
        return float(math.exp(rng.uniform(math.log(dist.low), math.log(dist.high))))
    return float(rng.uniform(dist.low, dist.high))


def mutate(dist, value, rng: np.random.Generator):
    """A value other than `value` (when the distribution has another): any other category; for numbers a
    neighbour, as depth 2 -> 1 or 3 keeps most of what made the parent good."""
    if isinstance(dist, CategoricalDistribution):
        others = [c for c in dist.choices if c != value]
        return others[rng.integers(len(others))] if others else value
    if isinstance(dist, IntDistribution):
        near = [v for v in (value - dist.step, value + dist.step) if dist.low <= v <= dist.high]
        return int(near[rng.integers(len(near))]) if near else value
    if dist.log:
        return float(np.clip(value * math.exp(rng.normal(0, 0.3)), dist.low, dist.high))
    return float(np.clip(value + rng.normal(0, 0.1 * (dist.high - dist.low)), dist.low, dist.high))


def _fits(dist, value) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    return dist.low <= value <= dist.high


class Plan:
    """How a child picks each choice it meets: the mutated one changed, the parent's others inherited, new ones
    drawn at random. No parent: everything at random."""

    def __init__(self, rng: np.random.Generator, parent=None, mutated: str | None = None):
        self.rng, self.parent, self.mutated = rng, parent, mutated
        self.values: dict = {}

    def choose(self, name: str, dist):
        if name in self.values and _fits(dist, self.values[name]):
            return self.values[name]
        inherited = self.parent.params.get(name) if self.parent is not None else None
        if self.parent is not None and name in self.parent.params and _fits(dist, inherited):
            value = mutate(dist, inherited, self.rng) if name == self.mutated else inherited
        else:
            value = draw(dist, self.rng)
        self.values[name] = value
        return value


class EvolutionSampler(BaseSampler):
    def __init__(self, seed: int | None = None, population: int = 12, tournament: int = 3, warmup: int = 4,
                 propose: Callable[[Choose], tuple | None] | None = None, attempts: int = 30,
                 candidates: int = 6, optimism: float = 0.01):
        self.seed = 0 if seed is None else int(seed)
        self.population, self.tournament, self.warmup = population, tournament, warmup
        self.propose, self.attempts = propose, attempts
        self.candidates, self.optimism = candidates, optimism
        self._plans: dict[int, Plan] = {}  # trial id -> plan, for suggestions in this process
        self._lock = threading.Lock()

    # ----- Optuna's interface: everything is sampled independently, from the trial's plan
    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def reseed_rng(self) -> None:
        self.seed += 1

    def before_trial(self, study, trial) -> None:
        if "fixed_params" in trial.system_attrs or PLAN in trial.system_attrs:
            return  # a re-queued or enqueued trial (its values are given), or one planned already
        with self._lock:  # threads of one process: each sees the plans of the trials started before it
            plan, parent = self._plan(study, trial)
        self._plans[trial._trial_id] = plan
        storage = study._storage
        if parent is not None:
            storage.set_trial_system_attr(trial._trial_id, PARENT, parent.number)
            storage.set_trial_system_attr(trial._trial_id, MUTATED, plan.mutated)
        if self.propose is not None:
            storage.set_trial_system_attr(trial._trial_id, PLAN, json.dumps(plan.values))

    def sample_independent(self, study, trial, name, dist):
        plan = self._plans.get(trial._trial_id)
        if plan is None:  # planned by another process (or before a restart): read the plan back
            stored = study._storage.get_trial_system_attrs(trial._trial_id)
            plan = Plan(self._rng(trial.number, 1))
            plan.values = json.loads(stored.get(PLAN, "{}"))
            self._plans[trial._trial_id] = plan
        return plan.choose(name, dist)

    def after_trial(self, study, trial, state, values) -> None:
        self._plans.pop(trial._trial_id, None)

    # ----- planning
    def _rng(self, number: int, salt: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed % 2**32, number, salt])

    def _plan(self, study, trial) -> tuple[Plan, object]:
        rng = self._rng(trial.number)
        pool = self._pool(study)
        if len(pool) < max(1, self.warmup):
            parents = [None]
        else:
            parents = [self._tournament(study, pool, rng) for _ in range(3)]
        if self.propose is None:
            parent = parents[0]
            return Plan(rng, parent, self._pick_mutated(parent, rng)), parent
        seen = self._seen(study)
        fallback, drafts = None, []
        for attempt in range(self.attempts):
            # mutations of a few tournament winners first; when all of those were seen, fresh random points
            parent = parents[attempt % len(parents)] if attempt < self.attempts // 2 else None
            if parent is None and drafts:
                break  # the children drafted so far are ranked; random points are the last resort
            plan = Plan(rng, parent, self._pick_mutated(parent, rng))
            result = self.propose(plan.choose)
            if result is None:
                continue  # infeasible before training
            values, key, known = (*result, None)[:3]
            plan.values = dict(values)
            if key in seen:
                fallback = fallback or (plan, parent)
                continue
            seen.add(key)
            drafts.append((plan, parent, key, known))
            if parent is None or known is None or len(drafts) >= self.candidates:
                break
        if drafts:
            (plan, parent, key, _), gain = self._rank(study, drafts, rng)
            study._storage.set_trial_system_attr(trial._trial_id, HASH, key)
            if gain is not None:
                study._storage.set_trial_system_attr(trial._trial_id, GAIN, gain)
            return plan, parent
        if fallback is not None:  # every feasible candidate was seen already: train one again, not nothing
            return fallback
        return Plan(rng), None  # nothing feasible found: let the trial find out why

    def _rank(self, study, drafts: list, rng) -> tuple[tuple, float | None]:
        """The draft with the largest predicted hypervolume gain (a random one when none gains), and the gain."""
        if len(drafts) == 1:
            return drafts[0], None
        signs = _signs(study)
        done = self._pool(study, everyone=True)
        losses = np.array([np.array(t.values) * signs for t in done]).reshape(-1, len(signs))
        knowns = [known(study) for _, _, _, known in drafts]
        if len(signs) < 2 or not any(knowns):
            return drafts[0], None  # nothing is known before training: no ranking to make
        predicted = []
        for (plan, parent, key, _), k in zip(drafts, knowns):
            predicted.append(np.array([k[i] if i in k else self._predict(parent.values[i], signs[i])
                                       for i in range(len(signs))]) * signs)
        pts = np.vstack([losses, *predicted])
        if not np.all(np.isfinite(pts)):
            pts = pts[np.all(np.isfinite(pts), axis=1)]
        ref = pts.max(axis=0) + 0.1 * np.abs(pts.max(axis=0) - pts.min(axis=0)) + 1e-12
        base = _hv(losses, ref)
        gains = np.array([_hv(np.vstack([losses, p]), ref) - base for p in predicted])
        if gains.max() <= 0:
            return drafts[int(rng.integers(len(drafts)))], 0.0
        best = int(np.argmax(gains))
        return drafts[best], float(gains[best])

    def _predict(self, value: float, sign: float) -> float:
        """A trained objective of a child, before training: its parent's, a little better (`optimism`)."""
        return value - sign * self.optimism * abs(value)

    def _pick_mutated(self, parent, rng) -> str | None:
        names = [n for n, d in (parent.distributions.items() if parent is not None else ()) if not d.single()]
        return names[rng.integers(len(names))] if names else None

    def _pool(self, study, everyone: bool = False) -> list:
        """The population: the most recently completed trials (aging), duplicates of one architecture once;
        with `everyone`, all completed trials."""
        done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if "duplicate_of" not in t.user_attrs and t.values is not None]
        done.sort(key=lambda t: t.datetime_complete or t.datetime_start)
        return done if everyone else done[-self.population:]

    def _tournament(self, study, pool: list, rng):
        signs = _signs(study)
        picked = rng.choice(len(pool), size=min(self.tournament, len(pool)), replace=False)
        losses = np.array([np.array(pool[i].values) * signs for i in range(len(pool))])
        place = fitness_order(losses)  # ranked within the whole population, so a tournament's winner is global
        return pool[min(picked, key=lambda i: place[i])]

    def _seen(self, study) -> set:
        seen = set()
        for t in study.get_trials(deepcopy=False):
            for key in (t.user_attrs.get("ir_hash"), t.system_attrs.get(HASH)):
                if key:
                    seen.add(key)
        return seen

