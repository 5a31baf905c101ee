"""Helpers for the search tests (tests/search/test_search_*.py import them as `searchutil`): tiny .arch
spaces written to tmp_path, in-process searches, the CLI.

Every space here trains for one epoch on a tiny network (scikit-learn's 8x8 digits, or MNIST-1D), so a trial
takes a fraction of a second on two CPU cores.
"""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna

import archdsl
from archdsl.search.study import FINISHED, run_search

REPO = Path(__file__).resolve().parents[2]
# A small space of plain CNNs on 8x8 digits (12 points): the multi-process tests put their search section after it.
CNN_SPACE = """
model net(width = choice(4, 6, 8), depth = int(1, 2), k = choice(3, 5)) {
  input img[1, 8, 8]
  stem: conv(width, k = k) >> relu
  body: repeat depth { conv(width, k = k) >> relu }
  head: flatten >> linear(10)
}
"""
S = optuna.trial.TrialState


def write_arch(tmp_path: Path, text: str, name: str = "space.arch") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def storage_url(out: Path) -> str:
    return f"sqlite:///{(Path(out) / 'study.db').resolve()}"


def load_study(out: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage_url(out))


def precreate(out: Path, name: str, directions: list[str], enqueue: list[dict]) -> None:
    """Create the study a search will resume and queue trials with fixed parameters (run first, in order)."""
    Path(out).mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=name, storage=storage_url(out), directions=directions)
    for params in enqueue:
        study.enqueue_trial(params)


def search(arch: Path, out: Path, **kwargs):
    """run_search in this process; returns the study."""
    kwargs.setdefault("progress", False)
    study, spec, data, seconds = run_search(archdsl.parse(arch), out=out, **kwargs)
    return study


def finished(study) -> list:
    return study.get_trials(deepcopy=False, states=FINISHED)


def cli(*argv: str) -> tuple[int, str, str]:
    """`archdsl ARGV` in this process: (exit status, stdout, stderr)."""
    from archdsl.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def cli_process(*argv: str, env: dict | None = None, log: Path | None = None) -> subprocess.Popen:
    """`python -m archdsl.cli ARGV` as a child process. Its stdout and stderr go to LOG.out / LOG.err when
    `log` is given (nothing to drain while it runs), else to pipes (read them with communicate())."""
    if log is not None:
        with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
            return subprocess.Popen([sys.executable, "-m", "archdsl.cli", *map(str, argv)], cwd=REPO,
                                    env={**os.environ, **(env or {})}, stdout=out, stderr=err, text=True)
    return subprocess.Popen([sys.executable, "-m", "archdsl.cli", *map(str, argv)], cwd=REPO,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(proc: subprocess.Popen, log: Path, timeout: float) -> tuple[int, str, str]:
    """Wait for a cli_process(..., log=LOG) child: (exit status, stdout, stderr)."""
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return rc, Path(f"{log}.out").read_text(), Path(f"{log}.err").read_text()


def dominates(a, b, directions) -> bool:
    """a dominates b: no worse on every objective and better on one (directions: optuna StudyDirection)."""
    sign = [1.0 if d == optuna.study.StudyDirection.MINIMIZE else -1.0 for d in directions]
    la = [s * v for s, v in zip(sign, a)]
    lb = [s * v for s, v in zip(sign, b)]
    return all(x <= y for x, y in zip(la, lb)) and any(x < y for x, y in zip(la, lb))


def signal_mid_trial(proc: subprocess.Popen, out: Path, name: str, sig: int, complete: int = 1,
                     timeout: float = 150.0) -> list | None:
    """Send `sig` to a search child once `complete` trials of study `name` in OUT/study.db are complete and
    another has been running for a moment (so the signal lands inside a trial); wait for it to exit.
    Returns the trials as they were just before the signal, or None when the search ended first."""
    import datetime
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        try:
            trials = load_study(out, name).get_trials(deepcopy=True) if (Path(out) / "study.db").exists() else []
        except Exception:  # the study (or its tables) not created yet, or the database busy: look again
            trials = []
        running = [t for t in trials if t.state == S.RUNNING]
        if sum(t.state == S.COMPLETE for t in trials) >= complete and running \
                and (datetime.datetime.now() - running[0].datetime_start).total_seconds() > 0.3:
            proc.send_signal(sig)
            proc.wait(timeout=60)
            return trials
        time.sleep(0.05)
    raise AssertionError(f"the search did not reach {complete} complete trials in {timeout:.0f}s")


def search_and_worker(arch: Path, storage: str, study: str, outs: tuple[Path, Path], trials: int,
                      timeout: float = 300) -> None:
    """`archdsl search` on `storage`, then -- once the study exists -- `archdsl worker` joining it from another
    --out with the .arch file gone (the worker rebuilds the search from the source the study stores). Both must
    exit 0."""
    import time

    search_proc = cli_process("search", arch, "--storage", storage, "--study", study, "--trials", trials,
                              "--out", outs[0], "--quiet", log=outs[0].with_suffix(".log"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and search_proc.poll() is None:
        try:
            if "launch" in optuna.load_study(study_name=study, storage=storage).user_attrs:
                break
        except Exception:  # not created yet (or its tables): look again
            pass
        time.sleep(0.1)
    arch.rename(arch.with_suffix(".gone"))
    worker_proc = cli_process("worker", "--storage", storage, "--study", study, "--out", outs[1], "--quiet",
                              log=outs[1].with_suffix(".log"))
    for proc, out in ((search_proc, outs[0]), (worker_proc, outs[1])):
        rc, stdout, stderr = finish(proc, out.with_suffix(".log"), timeout=timeout)
        assert rc == 0, stderr
