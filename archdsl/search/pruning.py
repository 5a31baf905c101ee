"""Early stopping for multi-objective searches (Optuna's pruners rank one value): successive halving over epochs.

Rungs sit where successive halving with a factor ETA = 3 puts them: after epochs / 9 and epochs / 3 (rounded;
the first after 2 epochs at least), so many architectures get a few epochs and the best go on. At a rung, a
trial stops when
1. a completed trial, no worse on every cost known before training (latency, params, MACs, memory: the
   minimised objectives), was more accurate at this epoch: it will most likely be dominated by that trial, or
2. it is not in the best 1 / ETA of the trials that reached this rung, ranked by non-dominated sorting on
   (accuracy at this epoch, costs) (six trials at the rung at least). A fast, small trial is ranked against
   accuracy *and* cost, so the cheap end of the front is not stopped for being less accurate than big networks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import optuna

from archdsl.search.evolution import nondominated_ranks

ETA = 3
MIN_AT_RUNG = 2 * ETA


@dataclass
class Peer:
    """What the rung rule needs of another trial."""
    number: int
    complete: bool
    curve: list  # validation accuracy after each epoch
    costs: tuple  # the minimised objectives known before training


def rungs(epochs: int) -> list[int]:
    """The epochs (0-based) at which trials are checked."""
    points = {max(2, round(epochs / ETA ** 2)) - 1, max(2, round(epochs / ETA)) - 1}
    return sorted(p for p in points if p < epochs - 1)


def cost_keys(spec) -> list[str]:
    return [("latency_ms" if o.metric == "latency" else o.metric) for o in spec.objectives
            if o.metric != "accuracy" and o.direction == "minimize"]


def decide(epoch: int, acc: float, costs: tuple, peers: list[Peer]) -> str | None:
    """Why a trial with accuracy `acc` at `epoch` and `costs` should stop at this rung, or None to go on."""
    at_rung = [p for p in peers if len(p.curve) > epoch]
    for p in at_rung:
        if p.complete and all(a <= b for a, b in zip(p.costs, costs)) and p.curve[epoch] > acc:
            return (f"epoch {epoch + 1}: trial {p.number} is no slower/larger and was already more accurate "
                    f"({p.curve[epoch]:.3f} > {acc:.3f})")
    if len(at_rung) + 1 < MIN_AT_RUNG:
        return None
    losses = np.array([(-acc, *costs)] + [(-p.curve[epoch], *p.costs) for p in at_rung], dtype=float)
    ranks = nondominated_ranks(losses)
    ahead = int(np.sum(ranks < ranks[0]))
    keep = math.ceil(len(losses) / ETA)
    if ahead >= keep:
        return (f"epoch {epoch + 1}: {ahead} of {len(losses)} trials at this rung rank ahead on (accuracy, cost); "
                f"the best {keep} go on")
    return None


def should_stop(trial, epoch: int, acc: float, spec) -> bool:
    epochs = int((spec.objective("accuracy").args if spec.objective("accuracy") else {}).get("epochs", 10))
    if epoch not in rungs(epochs):
        return False
    keys = cost_keys(spec)
    mine = trial.user_attrs
    if not all(k in mine for k in keys):
        return False
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    peers = [Peer(t.number, t.state == optuna.trial.TrialState.COMPLETE, t.user_attrs.get("val_curve") or [],
                  tuple(t.user_attrs[k] for k in keys))
             for t in trial.study.get_trials(deepcopy=False, states=states)
             if "duplicate_of" not in t.user_attrs and all(k in t.user_attrs for k in keys)]
    reason = decide(epoch, acc, tuple(mine[k] for k in keys), peers)
    if reason:
        trial.set_user_attr("pruned_because", reason)
    return reason is not None
