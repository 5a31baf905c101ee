"""Live progress of a search: trials done / pruned / failed, the current Pareto front, time left."""
from __future__ import annotations

import time

import optuna
from rich.console import Console
from rich.live import Live
from rich.table import Table

S = optuna.trial.TrialState


class Progress:
    def __init__(self, study, spec, total: int, timeout: float | None):
        self.study, self.spec, self.total, self.timeout = study, spec, total, timeout
        self.console = Console(stderr=True)
        self.live = Live(console=self.console, refresh_per_second=2, transient=False)
        self.t0 = time.perf_counter()
        self.start_count = len(study.get_trials(deepcopy=False, states=(S.COMPLETE, S.PRUNED, S.FAIL)))

    def start(self):
        self.live.start()
        self.live.update(self.render())

    def stop(self):
        self.live.update(self.render())
        self.live.stop()

    def on_epoch(self, number: int, stats: dict) -> None:
        """The per-trial progress line, printed above the study table after each epoch."""
        self.console.print(epoch_line(number, stats), highlight=False)

    def on_trial(self, study, trial):
        self.live.update(self.render())

    def render(self) -> Table:
        trials = self.study.get_trials(deepcopy=False)
        count = {s: sum(t.state == s for t in trials) for s in (S.COMPLETE, S.PRUNED, S.FAIL, S.RUNNING)}
        finished = count[S.COMPLETE] + count[S.PRUNED] + count[S.FAIL]
        elapsed = time.perf_counter() - self.t0
        new = finished - self.start_count
        eta = (elapsed / new) * max(0, self.total - finished) if new > 0 else None
        if self.timeout:
            eta = min(eta if eta is not None else self.timeout, max(0.0, self.timeout - elapsed))
        title = (f"{self.study.study_name}: {finished}/{self.total} trials  done {count[S.COMPLETE]}  "
                 f"pruned/infeasible {count[S.PRUNED]}  failed {count[S.FAIL]}  running {count[S.RUNNING]}  "
                 f"elapsed {elapsed:.0f}s" + (f"  ETA {eta:.0f}s" if eta is not None else ""))
        table = Table(title=title, title_justify="left")
        table.add_column("trial", justify="right")
        for o in self.spec.objectives:
            table.add_column(f"{o.direction[:3]} {o.metric}", justify="right")
        table.add_column("params", justify="right")
        try:
            front = self.study.best_trials
        except (RuntimeError, ValueError):
            front = []
        for t in sorted(front, key=lambda t: t.values[0])[:12]:
            table.add_row(str(t.number), *[f"{v:.4g}" for v in t.values], f"{t.user_attrs.get('params', 0):,}")
        return table


def epoch_line(number: int, s: dict) -> str:
    return (f"trial {number} epoch {s['epoch']}/{s['epochs']}  loss {s['loss']:.4f}  val acc {s['val_accuracy']:.4f}  "
            f"{s['images_per_s']:,.0f} samples/s  ETA {s['eta_s']:.0f}s")
