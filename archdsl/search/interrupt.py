"""How a search stops early and still ends well.

Ctrl-C (SIGINT) stops the trial that is running at once (or, with --jobs > 1, each running trial at its next
epoch), marks it `interrupted` rather than a genuine failure, queues its parameters again so the next run
retries it, and lets the command write pareto.json for what finished. A second Ctrl-C stops at once.

Which trials count toward --trials: complete and pruned (or infeasible) ones, and trials that failed with a
reason of their own (a NaN loss). A trial killed with its process (failed later by the heartbeat) or
interrupted does not count: its parameters run again instead.
"""
from __future__ import annotations

import collections
import contextlib
import re
import signal
import threading

import optuna

S = optuna.trial.TrialState


def counts(t) -> bool:
    """Whether a trial counts toward --trials."""
    return t.state in (S.COMPLETE, S.PRUNED) or (t.state == S.FAIL and "error" in t.user_attrs)


def done(study) -> int:
    return sum(counts(t) for t in study.get_trials(deepcopy=False))


def retries_waiting(study) -> int:
    """Queued reruns of killed or interrupted trials."""
    return sum(t.state == S.WAITING and ("failed_trial" in t.system_attrs or "retry_of" in t.user_attrs)
               for t in study.get_trials(deepcopy=False))


class StopAt:
    """Optuna callback: stop once `trials` trials count and no queued retry is left."""

    def __init__(self, trials: int):
        self.trials = trials

    def __call__(self, study, trial):
        if done(study) >= self.trials and not retries_waiting(study):
            study.stop()


class Interrupts:
    """SIGINT handling for one study.optimize call (a `with` block; a no-op off the main thread, where
    Python delivers no signals).

    The first Ctrl-C raises KeyboardInterrupt at once only inside `live()` regions -- training, timing --
    which touch neither the study's storage nor a lock: raised inside a SQLAlchemy commit or a pool's lock it
    can leave a transaction open on the SQLite file, and every later write of this process (the trial's
    "interrupted" mark, the requeue) then waits out the busy timeout. Elsewhere it is deferred to the next
    `check()` (each epoch, each trial's start). A second Ctrl-C raises wherever it lands."""

    def __init__(self):
        self.requested = False
        self._previous = None
        self._live = False  # the main thread is in a live() region and not in a held() one

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        return False

    def _handle(self, signum, frame):
        first = not self.requested
        self.requested = True
        if self._live or not first:
            raise KeyboardInterrupt

    def check(self) -> None:
        """Raise the deferred Ctrl-C, if any (called where stopping is safe)."""
        if self.requested:
            raise KeyboardInterrupt

    def trial(self):
        """Context for one objective call: a trial started after Ctrl-C stops at its start."""
        self.check()
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def live(self):
        """A region of pure computation, stopped at once by Ctrl-C."""
        self.check()
        self._set(True)
        try:
            yield
        finally:
            self._set(False)

    @contextlib.contextmanager
    def held(self):
        """A region inside live() that must run to its end (storage writes); Ctrl-C stops right after it."""
        was = self._live
        self._set(False)
        try:
            yield
        finally:
            self._set(was)
        self.check()

    def _set(self, value: bool) -> None:
        if threading.current_thread() is threading.main_thread():
            self._live = value


def requeue_interrupted(study) -> list[int]:
    """Queue the parameters of interrupted trials not queued yet; returns their numbers."""
    trials = study.get_trials(deepcopy=False)
    queued = {t.user_attrs.get("retry_of") for t in trials}
    out = []
    for t in trials:
        # (a trial stopped before it chose anything has nothing to retry)
        if t.state == S.FAIL and t.user_attrs.get("interrupted") and t.params and t.number not in queued:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            out.append(t.number)
    return out


def why_none_completed(trials) -> str:
    """'2x infeasible: constraint at f:5:3 not met (e.g. params=170); 1x failed: ...': the commonest reasons,
    trials that differ only in the measured values counted together."""
    reasons, example = collections.Counter(), {}
    for t in trials:
        if "infeasible" in t.user_attrs:
            text = "infeasible: " + t.user_attrs["infeasible"].splitlines()[0]
        elif "error" in t.user_attrs:
            text = "failed: " + t.user_attrs["error"].splitlines()[0]
        else:
            text = t.state.name.lower()
        m = re.match(r"(.*) \(([^()]*)\)$", text)  # "... not met (params=170)"
        key = m.group(1) if m else text
        reasons[key] += 1
        example.setdefault(key, f" (e.g. {m.group(2)})" if m else "")
    return "; ".join(f"{n}x {why}{example[why]}" for why, n in reasons.most_common(3))
