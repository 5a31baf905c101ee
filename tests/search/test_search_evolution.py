"""The evolution sampler on tiny define-by-run spaces (plain Optuna objectives, no training): one choice
mutated at a time, conditional choices inherited or drawn, no duplicate proposals, resumption, workers."""
from __future__ import annotations

import json
import math

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution

from archdsl.search.evolution import MUTATED, PARENT, PLAN, EvolutionSampler, Plan, crowding, nondominated_ranks

DEPTH = IntDistribution(0, 2)
K = CategoricalDistribution([3, 5])
WIDTH = CategoricalDistribution([8, 16, 32])


def suggest(trial) -> dict:
    """depth in 0..2; k exists only when depth > 0; width always."""
    p = {"depth": trial.suggest_int("depth", 0, 2)}
    if p["depth"] > 0:
        p["k"] = trial.suggest_categorical("k", [3, 5])
    p["width"] = trial.suggest_categorical("width", [8, 16, 32])
    return p


def objective(trial):
    p = suggest(trial)
    return p["depth"] * 0.3 + p["width"] / 32 + p.get("k", 0) * 0.01, p["width"] * (1 + p["depth"])


def frozen(params: dict):
    dists = {"depth": DEPTH, "k": K, "width": WIDTH}
    return optuna.trial.create_trial(params=params, distributions={n: dists[n] for n in params}, values=[0.5, 1.0])


def run_plan(parent, mutated, seed=0) -> dict:
    """The child's choices, met in the order the objective meets them."""
    plan = Plan(np.random.default_rng(seed), parent, mutated)
    out = {"depth": plan.choose("depth", DEPTH)}
    if out["depth"] > 0:
        out["k"] = plan.choose("k", K)
    out["width"] = plan.choose("width", WIDTH)
    return out


def test_mutating_width_changes_only_width():
    for seed in range(10):
        child = run_plan(frozen({"depth": 1, "k": 5, "width": 16}), "width", seed)
        assert child["depth"] == 1 and child["k"] == 5 and child["width"] in (8, 32)


def test_mutating_depth_up_draws_the_new_conditional_choice():
    seen_k = set()
    for seed in range(20):
        child = run_plan(frozen({"depth": 0, "width": 32}), "depth", seed)
        assert child["depth"] == 1 and child["width"] == 32  # an int moves to a neighbour; 0's only one is 1
        seen_k.add(child["k"])  # k did not exist in the parent: drawn at random
    assert seen_k == {3, 5}


def test_mutating_depth_keeps_the_inherited_conditional_choice():
    depths = set()
    for seed in range(20):
        child = run_plan(frozen({"depth": 1, "k": 5, "width": 8}), "depth", seed)
        depths.add(child["depth"])
        assert child["width"] == 8
        assert child.get("k", 5) == 5 and ("k" in child) == (child["depth"] > 0)
    assert depths == {0, 2}


def test_children_in_a_study_differ_from_their_parent_in_one_choice():
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=EvolutionSampler(seed=1, warmup=5))
    study.optimize(objective, n_trials=40)
    children = [t for t in study.trials if PARENT in t.system_attrs]
    assert len(children) == 35
    for t in children:
        parent = study.trials[t.system_attrs[PARENT]]
        mutated = t.system_attrs[MUTATED]
        shared = set(t.params) & set(parent.params)
        assert [n for n in shared if t.params[n] != parent.params[n]] == [mutated]
        if mutated != "depth":  # the same conditional choices exist
            assert set(t.params) == set(parent.params)


def test_tournament_prefers_the_front():
    """With a tournament as large as the population every parent is on the population's first front."""
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=EvolutionSampler(seed=2, warmup=6, population=6, tournament=6))
    study.optimize(objective, n_trials=20)
    for t in study.trials[6:]:
        pool = [u for u in study.trials[:t.number] if u.state == optuna.trial.TrialState.COMPLETE][-6:]
        parent = study.trials[t.system_attrs[PARENT]]
        assert not any(u.values[0] >= parent.values[0] and u.values[1] <= parent.values[1] and
                       u.values != parent.values for u in pool)


# ----- architecture-aware proposals: a key per architecture, infeasible ones refused
def keyed(choose):
    p = {"depth": choose("depth", DEPTH)}
    if p["depth"] > 0:
        p["k"] = choose("k", K)
    p["width"] = choose("width", WIDTH)
    if p["width"] == 32 and p["depth"] == 2:
        return None  # "infeasible before training"
    return p, repr(sorted(p.items()))


def keyed_objective(trial):
    p = suggest(trial)
    trial.set_user_attr("ir_hash", repr(sorted(p.items())))
    return p["depth"] * 0.3 + p["width"] / 32 + p.get("k", 0) * 0.01, p["width"] * (1 + p["depth"])


FEASIBLE = 3 * 1 + 3 * 2 * 2 - 2  # depth 0: 3 widths; depth 1, 2: 2 k x 3 widths; minus depth 2 at width 32


def test_no_duplicates_and_no_infeasible_until_the_space_is_exhausted():
    sampler = EvolutionSampler(seed=3, warmup=4, propose=keyed)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(keyed_objective, n_trials=FEASIBLE)
    keys = [t.user_attrs["ir_hash"] for t in study.trials]
    assert len(set(keys)) == FEASIBLE
    assert not any(t.params["width"] == 32 and t.params["depth"] == 2 for t in study.trials)
    study.optimize(keyed_objective, n_trials=2)  # nothing new left: it trains a seen one rather than stop
    assert len(study.trials) == FEASIBLE + 2


def test_resumes_from_storage_and_shares_it_between_workers(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = optuna.create_study(study_name="s", storage=url, directions=["maximize", "minimize"],
                                sampler=EvolutionSampler(seed=0, warmup=3, propose=keyed))
    first.optimize(keyed_objective, n_trials=5)
    # two new workers (fresh samplers, same seed: the plans must not come from in-memory state), each asking
    # before the other finishes
    a, b = (optuna.load_study(study_name="s", storage=url, sampler=EvolutionSampler(seed=0, warmup=3, propose=keyed))
            for _ in range(2))
    for _ in range(4):
        ta, tb = a.ask(), b.ask()
        pa, pb = suggest(ta), suggest(tb)
        assert pa != pb
        for study, t, p in ((a, ta, pa), (b, tb, pb)):
            t.set_user_attr("ir_hash", repr(sorted(p.items())))
            study.tell(t, [p["width"] / 32, p["width"] * (1 + p["depth"])])
    keys = [t.user_attrs["ir_hash"] for t in first.trials]
    assert len(keys) == 13 and len(set(keys)) == 13


def test_a_plan_made_by_one_worker_is_followed_by_another(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    one = optuna.create_study(study_name="s", storage=url, directions=["maximize", "minimize"],
                              sampler=EvolutionSampler(seed=0, warmup=0, propose=keyed))
    trial = one.ask()
    planned = json.loads(one._storage.get_trial_system_attrs(trial._trial_id)[PLAN])
    other = optuna.load_study(study_name="s", storage=url, sampler=EvolutionSampler(seed=99, propose=keyed))
    other.get_trials()  # as another process would, it learns of the trial from the storage
    assert suggest(optuna.Trial(other, trial._trial_id)) == planned


# ----- ranking, against hand-worked examples
def test_nondominated_ranks_and_crowding():
    losses = np.array([[1, 5], [2, 3], [4, 1], [3, 4], [5, 5]], dtype=float)
    # front 0: (1,5) (2,3) (4,1); (3,4) is dominated by (2,3) only; (5,5) by (3,4)
    assert nondominated_ranks(losses).tolist() == [0, 0, 0, 1, 2]
    d = crowding(losses[:3])
    # middle point: (4-1)/(4-1) + (5-1)/(5-1) = 2
    assert math.isinf(d[0]) and math.isinf(d[2]) and d[1] == 2.0


# ----- ranking drafted children by predicted hypervolume gain (objectives known before training)
X = CategoricalDistribution(list(range(12)))


def area(points, ref_lat):
    """2-D hypervolume by brute force, independent of the sampler: the union of the rectangles
    [0, acc] x [lat, ref_lat] for (acc, lat) points, summed over the latency axis in unit steps (latencies
    are integers here)."""
    total = 0.0
    for lat in range(0, int(ref_lat)):
        best = max((a for a, l in points if l <= lat), default=0.0)
        total += best
    return total


def latency_study(sampler, dist, done):
    """A study whose completed trials are `done` = [(x, accuracy)] at latency x, and whose proposals report
    latency x before training; returns it and the list its proposals draft into, in order."""
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    for x, acc in done:
        study.add_trial(optuna.trial.create_trial(params={"x": x}, distributions={"x": dist},
                                                  values=[acc, float(x)], user_attrs={"ir_hash": f"h{x}"}))
    drafted = []

    def propose(choose):
        x = choose("x", dist)
        drafted.append(x)
        return {"x": x}, f"h{x}", lambda study: {1: float(x)}

    sampler.propose = propose
    return study, drafted


def test_the_child_with_the_largest_predicted_gain_is_trained():
    """x is the architecture, its latency is x (known before training); completed trials form a front. Every
    drafted child is predicted at its parent's accuracy (plus 1 % optimism) with its own latency; the child
    trained is the draft whose predicted point adds the most area to the front, counted by brute force. (The
    tournament takes the whole population, so every draft has the same parent and the ranking does not depend
    on the reference point.)"""
    done = {7: 0.90, 9: 0.95, 11: 0.60}  # x -> accuracy; latency = x
    study, drafted = latency_study(EvolutionSampler(seed=3, warmup=0, tournament=3, candidates=6, optimism=0.01),
                                   X, done.items())
    trial = study.ask()
    parent = study.trials[study._storage.get_trial_system_attrs(trial._trial_id)[PARENT]]
    unseen = list(dict.fromkeys(x for x in drafted if x not in done))
    assert len(unseen) >= 2
    pred = parent.values[0] * 1.01
    ref_lat = 100  # any reference beyond every latency gives the same ranking of gains in 2-D
    front = [(a, float(x)) for x, a in done.items()]
    gains = {x: area(front + [(pred, x)], ref_lat) - area(front, ref_lat) for x in unseen}
    chosen = trial.suggest_categorical("x", list(range(12)))
    if max(gains.values()) > 0:
        assert gains[chosen] == max(gains.values())
        assert study._storage.get_trial_system_attrs(trial._trial_id)["archdsl:predicted_gain"] > 0
    else:
        assert chosen in unseen


def test_children_predicted_dominated_are_not_trained_while_another_gains():
    """Parent at latency 5 with 0.9; a completed trial at latency 2 is already 0.99: every child of that
    parent slower than 2 is predicted dominated, so the one draft faster than 2 (x = 1, the only place left
    to gain) is chosen whenever it was drafted."""
    xs = CategoricalDistribution([1, 2, 3, 4, 5, 6, 8])
    checked = 0
    for seed in range(16):
        study, drafted = latency_study(EvolutionSampler(seed=seed, warmup=0, tournament=1, candidates=5), xs,
                                       ((5, 0.9), (2, 0.99)))
        trial = study.ask()
        parent = study._storage.get_trial_system_attrs(trial._trial_id)[PARENT]
        chosen = trial.suggest_categorical("x", [1, 2, 3, 4, 5, 6, 8])
        if parent == 0 and 1 in drafted:
            assert chosen == 1
            checked += 1
    assert checked >= 2
