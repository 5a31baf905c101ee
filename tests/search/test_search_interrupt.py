"""Searches stopped from outside end well: Ctrl-C writes the report and requeues the trial it stopped; a
trial killed with its process is retried by a later run even when a quick rerun came first; stopped trials
never count toward --trials; two processes started together on one --out both work."""
from __future__ import annotations

import json
import signal
import time

import optuna
from searchutil import CNN_SPACE, S, cli_process, finish, load_study, signal_mid_trial, write_arch

import archdsl
from archdsl.search.interrupt import counts
from archdsl.search.spec import load_spec
from archdsl.search.study import open_study

GRACE = 3
ENV = {"ARCHDSL_HEARTBEAT_GRACE": str(GRACE), "ARCHDSL_HEARTBEAT_INTERVAL": "1"}
# trials of a few seconds each: the signals must land inside one, on a quiet machine too (and on a loaded
# one, where the test polls the study slowly)
SPACE = CNN_SPACE + """
search stop over digits {
  maximize accuracy(epochs = 60)
}
"""


def _search(arch, out, trials: int, log):
    return cli_process("search", arch, "--trials", trials, "--out", out, "--quiet", "--sampler", "random",
                       env=ENV, log=log)


def _counted(out) -> int:
    return sum(counts(t) for t in load_study(out, "stop").get_trials(deepcopy=False))


def test_ctrl_c_reports_what_finished_and_the_next_run_retries_the_stopped_trial(tmp_path):
    arch = write_arch(tmp_path, SPACE)
    out = tmp_path / "out"
    proc = _search(arch, out, 4, tmp_path / "first")
    before = signal_mid_trial(proc, out, "stop", signal.SIGINT)
    assert before is not None, "the search finished before Ctrl-C"
    rc, stdout, stderr = finish(proc, tmp_path / "first", timeout=60)
    assert rc == 130, stderr
    assert "Traceback" not in stderr and "interrupted after" in stderr and "run the same command" in stderr

    running = next(t for t in before if t.state == S.RUNNING).number
    trials = {t.number: t for t in load_study(out, "stop").get_trials(deepcopy=False)}
    # the trial running when the signal was sent, or -- when that one finished before the signal landed (a
    # trial here takes about a second) -- the next one, stopped at its start
    stopped = next(t for t in trials.values() if t.user_attrs.get("interrupted"))
    stopped_number = stopped.number
    assert stopped_number in (running, running + 1) and stopped.state == S.FAIL
    assert "error" not in stopped.user_attrs
    queued = [t for t in trials.values() if t.state == S.WAITING]
    assert [t.user_attrs.get("retry_of") for t in queued] == [stopped_number]
    # pareto.json describes what finished
    summary = json.loads((out / "pareto.json").read_text())
    complete = [t for t in trials.values() if t.state == S.COMPLETE]
    assert summary["trials"]["complete"] == len(complete) >= 1 and summary["trials"]["fail"] == 1
    assert summary["pareto"] and {m["number"] for m in summary["pareto"]} <= {t.number for t in complete}

    rc, stdout, stderr = finish(_search(arch, out, 4, tmp_path / "second"), tmp_path / "second", timeout=300)
    assert rc == 0, stderr
    trials = load_study(out, "stop").get_trials(deepcopy=False)
    assert not [t for t in trials if t.state in (S.RUNNING, S.WAITING)]
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == stopped_number)
    assert retry.state in (S.COMPLETE, S.PRUNED) and retry.params == stopped.params
    assert _counted(out) == 4  # the interrupted trial did not use up one of the 4


def test_trial_killed_then_quick_rerun_is_retried_by_a_later_run(tmp_path):
    arch = write_arch(tmp_path, SPACE)
    out = tmp_path / "out"
    env = {"ARCHDSL_HEARTBEAT_GRACE": "10", "ARCHDSL_HEARTBEAT_INTERVAL": "1"}  # the quick rerun fits in it

    def run(trials, log):
        return cli_process("search", arch, "--trials", trials, "--out", out, "--quiet", "--sampler", "random",
                           env=env, log=tmp_path / log)

    for attempt in range(3):
        assert signal_mid_trial(run(6, f"killed{attempt}"), out, "stop", signal.SIGKILL) is not None, \
            "the search finished before it could be killed"
        # what the kill left: the trial it landed in stays RUNNING (a kill that landed between two trials, after
        # the snapshot that triggered it, left none: kill the resumed search again)
        at_kill = load_study(out, "stop").get_trials(deepcopy=False)
        if any(t.state == S.RUNNING for t in at_kill):
            break
    killed = next(t for t in at_kill if t.state == S.RUNNING)
    target = sum(counts(t) for t in at_kill)  # a rerun asking for this many has nothing left to do
    t0 = time.monotonic()
    rc, _, stderr = finish(run(target, "quick"), tmp_path / "quick", timeout=300)
    assert rc == 0, stderr
    if time.monotonic() - t0 < 10:  # (on a very slow machine the quick rerun already saw it stale)
        assert load_study(out, "stop").trials[killed.number].state == S.RUNNING
    time.sleep(max(0.0, t0 + 10.5 - time.monotonic()))
    rc, _, stderr = finish(run(target, "later"), tmp_path / "later", timeout=300)
    assert rc == 0, stderr
    trials = load_study(out, "stop").get_trials(deepcopy=False)
    assert trials[killed.number].state == S.FAIL
    assert not [t for t in trials if t.state in (S.RUNNING, S.WAITING)], [t.state for t in trials]
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retry) == 1 and retry[0].params == killed.params and retry[0].state in (S.COMPLETE, S.PRUNED)
    assert _counted(out) == target + 1  # the killed trial does not count; its retry does


def test_two_processes_start_and_end_together_on_one_out(tmp_path):
    arch = write_arch(tmp_path, CNN_SPACE + """
search stop over digits {
  maximize accuracy(epochs = 1)
}
""")
    out = tmp_path / "out"
    procs = [_search(arch, out, 4, tmp_path / f"p{i}") for i in range(2)]
    results = [finish(p, tmp_path / f"p{i}", timeout=300) for i, p in enumerate(procs)]
    for rc, stdout, stderr in results:
        assert rc == 0, stderr
        assert "already exists" not in stderr and "Traceback" not in stderr
    assert _counted(out) >= 4
    summary = json.loads((out / "pareto.json").read_text())
    assert summary["study"] == "stop" and len(summary["pareto"]) == 1


def test_processes_started_together_propose_differently(tmp_path):
    """Two processes opening a fresh study with the same --seed get different sampler seeds."""
    arch = write_arch(tmp_path, CNN_SPACE + "\nsearch stop over digits {\n  maximize accuracy(epochs = 1)\n}\n")
    program = archdsl.parse(arch)
    spec = load_spec(program)
    out = tmp_path / "out"
    dist = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    studies = [open_study(program, spec, out, None, None, "random", 0, {}) for _ in range(2)]
    first = [s.ask(dist).params["x"] for s in studies]  # before either finishes a trial
    assert first[0] != first[1]
    # a fresh study with a given seed is still reproducible
    again = open_study(program, spec, tmp_path / "again", None, None, "random", 0, {})
    assert again.ask(dist).params["x"] == first[0]


def test_ctrl_c_raises_at_once_only_in_live_regions_and_never_inside_held_ones():
    import os

    import pytest

    from archdsl.search.interrupt import Interrupts

    reached = []
    interrupts = Interrupts()
    with interrupts:
        os.kill(os.getpid(), signal.SIGINT)  # between trials: deferred to the next safe point
        reached.append("deferred")
        with pytest.raises(KeyboardInterrupt):
            interrupts.trial()
    assert reached == ["deferred"]

    interrupts = Interrupts()
    with interrupts, pytest.raises(KeyboardInterrupt):
        with interrupts.live():
            with interrupts.held():  # e.g. an epoch's storage writes: they finish first
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)
                reached.append("held")
            reached.append("after held")  # not reached: the stop comes as the held region ends
    assert reached == ["deferred", "held"]

    interrupts = Interrupts()
    with interrupts, pytest.raises(KeyboardInterrupt):
        with interrupts.live():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # interrupted
            reached.append("slept")
    assert reached == ["deferred", "held"]

    interrupts = Interrupts()
    with interrupts, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C stops wherever it lands
        time.sleep(1)
        reached.append("second")
    assert reached == ["deferred", "held"]


def test_a_study_file_opened_by_another_program_while_its_tables_are_made_is_retried(tmp_path, monkeypatch):
    # SQLite's answer to the second CREATE TABLE of a race (a report or dashboard opening study.db as the search
    # creates it): OperationalError "table ... already exists"; the search tries again instead of failing
    import sqlalchemy.exc

    from archdsl.search import study as study_mod

    real, calls = optuna.storages.RDBStorage, []

    def racing(url, **kwargs):
        calls.append(url)
        if len(calls) == 1:
            real(url, **kwargs)  # the other program made the tables meanwhile
            raise sqlalchemy.exc.OperationalError("CREATE TABLE study_directions", {},
                                                  Exception("table study_directions already exists"))
        return real(url, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    storage = study_mod._rdb_storage(f"sqlite:///{tmp_path / 'study.db'}")
    assert len(calls) == 2 and storage.get_all_studies() == []
