"""Early stopping for multi-objective searches, where Optuna's pruners do not apply.

A trial stops at an epoch (after a warm-up of two epochs) when
1. its validation accuracy is below the 25th percentile of the finished trials' accuracy at that epoch
   (five such trials at least), or
2. it cannot reach the current Pareto front: a completed trial is at least as good on every objective known
   before training (latency, params, MACs, memory) and was already more accurate at this same epoch.
The second rule is a heuristic (a later epoch could still overtake), so it only fires after half the epochs.
"""
from __future__ import annotations

import numpy as np
import optuna

WARMUP_EPOCHS = 2
PERCENTILE = 25.0
MIN_PEERS = 5


def _curve(t) -> list:
    return t.user_attrs.get("val_curve") or []


def should_stop(trial, epoch: int, acc: float, spec) -> bool:
    if epoch < WARMUP_EPOCHS:
        return False
    done = [t for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if len(_curve(t)) > epoch and "duplicate_of" not in t.user_attrs]
    if len(done) >= MIN_PEERS:
        floor = float(np.percentile([_curve(t)[epoch] for t in done], PERCENTILE))
        if acc < floor:
            trial.set_user_attr("pruned_because", f"epoch {epoch}: val accuracy {acc:.3f} < p{PERCENTILE:g} {floor:.3f}")
            return True
    epochs = int((spec.objective("accuracy").args if spec.objective("accuracy") else {}).get("epochs", 10))
    if epoch + 1 >= epochs // 2 and _dominated(trial, epoch, acc, spec, done):
        return True
    return False


def _dominated(trial, epoch, acc, spec, done) -> bool:
    mine = trial.user_attrs
    keys = [("latency_ms" if o.metric == "latency" else o.metric) for o in spec.objectives
            if o.metric != "accuracy" and o.direction == "minimize"]
    if not keys or any(k not in mine for k in keys):
        return False
    for t in done:
        other = t.user_attrs
        if all(k in other and other[k] <= mine[k] for k in keys) and _curve(t)[epoch] > acc:
            trial.set_user_attr("pruned_because", f"epoch {epoch}: trial {t.number} is no slower/larger and was "
                                                  f"already more accurate ({_curve(t)[epoch]:.3f} > {acc:.3f})")
            return True
    return False
