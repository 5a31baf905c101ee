"""Early stopping for multi-objective searches, where Optuna's pruners do not apply.

Checks happen at three rungs, after a quarter, half and three quarters of the epochs (as in successive
halving; checking every epoch would compound into stopping almost everything). At a rung a trial stops when
1. its validation accuracy is below the 25th percentile of its *peers'* accuracy at that epoch (five peers at
   least, stopped ones counted with the epochs they ran), or
2. it cannot reach the current Pareto front: a completed peer was already more accurate at this epoch
   (from the second rung on; a heuristic, since a later epoch could still overtake).
A peer is an earlier trial at least as good on every objective known before training (latency, params,
MACs, memory): a fast, small trial is only compared with trials as fast and small, so the cheap end of the
front is not stopped for being less accurate than expensive networks.
"""
from __future__ import annotations

import numpy as np
import optuna

PERCENTILE = 25.0
MIN_PEERS = 5


def _curve(t) -> list:
    return t.user_attrs.get("val_curve") or []


def rungs(epochs: int) -> list[int]:
    """The epochs (0-based) at which trials are checked."""
    return sorted({max(1, epochs // 4) - 1, max(2, epochs // 2) - 1, max(3, 3 * epochs // 4) - 1} - {epochs - 1})


def _cost_keys(spec) -> list[str]:
    return [("latency_ms" if o.metric == "latency" else o.metric) for o in spec.objectives
            if o.metric != "accuracy" and o.direction == "minimize"]


def should_stop(trial, epoch: int, acc: float, spec) -> bool:
    epochs = int((spec.objective("accuracy").args if spec.objective("accuracy") else {}).get("epochs", 10))
    points = rungs(epochs)
    if epoch not in points:
        return False
    keys = _cost_keys(spec)
    mine = trial.user_attrs
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    peers = [t for t in trial.study.get_trials(deepcopy=False, states=states)
             if len(_curve(t)) > epoch and "duplicate_of" not in t.user_attrs
             and all(k in mine and k in t.user_attrs and t.user_attrs[k] <= mine[k] for k in keys)]
    if len(peers) >= MIN_PEERS:
        floor = float(np.percentile([_curve(t)[epoch] for t in peers], PERCENTILE))
        if acc < floor:
            trial.set_user_attr("pruned_because", f"epoch {epoch}: val accuracy {acc:.3f} < p{PERCENTILE:g} {floor:.3f} "
                                                  f"of {len(peers)} trials at least as fast and small")
            return True
    if epoch != points[0]:
        for t in peers:
            if t.state == optuna.trial.TrialState.COMPLETE and _curve(t)[epoch] > acc:
                trial.set_user_attr("pruned_because", f"epoch {epoch}: trial {t.number} is no slower/larger and was "
                                                      f"already more accurate ({_curve(t)[epoch]:.3f} > {acc:.3f})")
                return True
    return False
