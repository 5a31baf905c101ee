"""Kill a search with SIGKILL in the middle of a trial and run the same command again: nothing finished is
lost, the killed trial is failed by the heartbeat and its parameters are retried, and the study reaches the
requested number of trials.

The heartbeat grace period (20 s by default) is shortened with ARCHDSL_HEARTBEAT_GRACE (see
archdsl/search/study.py) so the test need not wait for it.
"""
from __future__ import annotations

import datetime
import signal
import time
import warnings

import optuna
import pytest
from searchutil import CNN_SPACE, S, cli_process, finish, load_study, write_arch

from archdsl.errors import ArchError
from archdsl.search.interrupt import counts
from archdsl.search.study import FINISHED, heartbeat_timing

GRACE = 3
ENV = {"ARCHDSL_HEARTBEAT_GRACE": str(GRACE), "ARCHDSL_HEARTBEAT_INTERVAL": "1"}

# Around a second per trial on two idle cores (several on a busy machine), so that a kill lands inside a trial.
SPACE = CNN_SPACE + """
search resume over digits {
  maximize accuracy(epochs = 6)
  trials = 6
}
"""


def _snapshot(out):
    try:
        return load_study(out, "resume").get_trials(deepcopy=True)
    except Exception:  # the study (or its tables) not created yet, or the database busy: look again later
        return []


def _start_and_kill(arch, out, log, timeout: float = 150.0):
    """Start the search; SIGKILL it once 2 trials are complete and another has been running for a moment.
    Returns the trials as they were at the kill (or None when the search finished first)."""
    proc = cli_process("search", arch, "--trials", 6, "--out", out, "--quiet", "--sampler", "random", env=ENV,
                       log=log)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return None
            trials = _snapshot(out) if (out / "study.db").exists() else []
            running = [t for t in trials if t.state == S.RUNNING]
            complete = [t for t in trials if t.state == S.COMPLETE]
            now = datetime.datetime.now()
            if len(complete) >= 2 and running and (now - running[0].datetime_start).total_seconds() > 0.2:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                return load_study(out, "resume").get_trials(deepcopy=True)
            time.sleep(0.05)
        pytest.fail("the search did not reach 2 complete trials in time")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_kill_and_resume(tmp_path):
    arch = write_arch(tmp_path, SPACE)
    out = tmp_path / "out"

    at_kill = None
    for attempt in range(3):  # a kill between two trials leaves nothing RUNNING: kill the resumed run again
        at_kill = _start_and_kill(arch, out, tmp_path / f"killed{attempt}")
        assert at_kill is not None, "the search finished before it could be killed"
        if any(t.state == S.RUNNING for t in at_kill):
            break
    killed = [t for t in at_kill if t.state == S.RUNNING]
    assert len(killed) == 1, [t.state for t in at_kill]
    killed = killed[0]
    done_before = {t.number: t for t in at_kill if t.state == S.COMPLETE}
    assert len(done_before) >= 2

    time.sleep(GRACE + 0.5)  # the killed trial's heartbeat is now stale
    proc = cli_process("search", arch, "--trials", 6, "--out", out, "--quiet", "--sampler", "random", env=ENV,
                       log=tmp_path / "resumed")
    rc, stdout, stderr = finish(proc, tmp_path / "resumed", timeout=300)
    assert rc == 0, stderr
    assert "study resume:" in stdout

    trials = load_study(out, "resume").get_trials(deepcopy=False)
    assert len([t for t in trials if t.state in FINISHED]) >= 6
    assert sum(counts(t) for t in trials) == 6  # the killed trial is not one of the 6 asked for
    assert all(t.state in FINISHED for t in trials), [t.state for t in trials]  # nothing RUNNING or WAITING
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    by_number = {t.number: t for t in trials}

    # everything finished before the kill is still there, unchanged
    for number, before in done_before.items():
        now = by_number[number]
        assert now.state == S.COMPLETE and now.values == before.values and now.params == before.params
        assert now.user_attrs["ir_hash"] == before.user_attrs["ir_hash"]

    # the trial running at the kill was failed by the heartbeat ...
    dead = by_number[killed.number]
    assert dead.state == S.FAIL and dead.datetime_complete is not None
    # ... and its parameters retried (Optuna's RetryHeartbeatStaleTrialCallback: system attrs
    # failed_trial = the original number, retry_history = the numbers retried so far)
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1, [t.system_attrs for t in trials]
    retry = retries[0]
    assert retry.number > killed.number and retry.params == killed.params
    assert retry.system_attrs["retry_history"] == [killed.number]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental" in Optuna
        assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == killed.number
    assert retry.state in (S.COMPLETE, S.PRUNED)
    if retry.state == S.COMPLETE:
        assert retry.user_attrs["ir_hash"] == killed.user_attrs["ir_hash"]


@pytest.mark.parametrize("env, expected", [
    ({}, (5, 20)),
    ({"ARCHDSL_HEARTBEAT_GRACE": "3"}, (1, 3)),
    ({"ARCHDSL_HEARTBEAT_GRACE": "60"}, (5, 60)),
    ({"ARCHDSL_HEARTBEAT_GRACE": "10", "ARCHDSL_HEARTBEAT_INTERVAL": "2"}, (2, 10)),
])
def test_heartbeat_timing_from_the_environment(monkeypatch, env, expected):
    for k in ("ARCHDSL_HEARTBEAT_GRACE", "ARCHDSL_HEARTBEAT_INTERVAL"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert heartbeat_timing() == expected


@pytest.mark.parametrize("env", [
    {"ARCHDSL_HEARTBEAT_GRACE": "soon"},
    {"ARCHDSL_HEARTBEAT_GRACE": "0"},
    {"ARCHDSL_HEARTBEAT_GRACE": "4", "ARCHDSL_HEARTBEAT_INTERVAL": "4"},
])
def test_bad_heartbeat_timing_is_an_error(monkeypatch, env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ArchError, match="ARCHDSL_HEARTBEAT"):
        heartbeat_timing()
