"""Hypervolume against wall-clock time: what a search strategy has found after t seconds.

One study gives a step curve (the hypervolume of the trials completed by then, from the study's first start);
several studies of one strategy (seeds) give a median line and a min-max band. `archdsl report` plots one
study; benchmarks/search_mnist1d.py plots one line per strategy.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import optuna


def curve(study, reference: np.ndarray, losses: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(seconds since the study's first trial started, hypervolume then), one point per completed trial.
    `losses(trial)` gives a trial's minimised objective vector (default: its values, maximised ones negated)."""
    from archdsl.search.report import hypervolume

    trials = study.get_trials(deepcopy=False)
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    if not starts:
        return np.zeros(0), np.zeros(0)
    t0 = min(starts)
    signs = np.array([-1.0 if d == optuna.study.StudyDirection.MAXIMIZE else 1.0 for d in study.directions])
    losses = losses or (lambda t: np.array(t.values) * signs)
    done = sorted((t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.datetime_complete),
                  key=lambda t: t.datetime_complete)
    times, hvs, points = [], [], []
    for t in done:
        points.append(losses(t))
        times.append((t.datetime_complete - t0).total_seconds())
        hvs.append(hypervolume(np.array(points), reference))
    return np.array(times), np.array(hvs)


def at(times: np.ndarray, hvs: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The step curve read at each time of `grid` (0 before the first completed trial)."""
    if not len(hvs):
        return np.zeros(len(grid))
    idx = np.searchsorted(times, grid, side="right") - 1
    return np.where(idx >= 0, hvs[np.clip(idx, 0, None)], 0.0)


def plot(curves: dict, path, horizon: float, title: str = "hypervolume against wall-clock time") -> None:
    """`curves` = {label: [(times, hvs), ...]}: the median over the list as a line, min-max as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0, horizon, 200)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, runs in curves.items():
        ys = np.array([at(t, h, grid) for t, h in runs])
        line, = ax.plot(grid / 60, np.median(ys, axis=0), label=f"{label} (median of {len(runs)})" if len(runs) > 1
                        else label)
        if len(runs) > 1:
            ax.fill_between(grid / 60, ys.min(axis=0), ys.max(axis=0), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("wall-clock time (minutes)")
    ax.set_ylabel("hypervolume")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
