"""Two workers share one study in PostgreSQL (`archdsl search --storage postgresql://...`).

Needs a server: set ARCHDSL_PG_URL (e.g. `export ARCHDSL_PG_URL="$(.ci/postgres.sh)"`, which starts a
throwaway one on 127.0.0.1:55432); skipped otherwise. Each run uses a fresh study name and deletes it after.
"""
from __future__ import annotations

import json
import os
import uuid

import optuna
import pytest
from searchutil import CNN_SPACE, S, cli, cli_process, dominates, finish, search_and_worker, write_arch

from archdsl.search.study import FINISHED

URL = os.environ.get("ARCHDSL_PG_URL")
pytestmark = pytest.mark.skipif(not URL, reason="ARCHDSL_PG_URL is not set (`export ARCHDSL_PG_URL=$(.ci/postgres.sh)` "
                                "starts a PostgreSQL server to test shared storage with)")

TRIALS, WORKERS = 8, 2

SPACE = CNN_SPACE + """
search shared over digits {
  maximize accuracy(epochs = 1)
  minimize params
}
"""


@pytest.fixture
def study_name():
    pytest.importorskip("psycopg2", reason="PostgreSQL storage needs psycopg2 (pip install psycopg2-binary)")
    name = f"archdsl-test-{uuid.uuid4().hex[:10]}"
    yield name
    try:
        optuna.delete_study(study_name=name, storage=URL)
    except KeyError:
        pass


def test_two_workers_share_one_study(tmp_path, study_name):
    arch = write_arch(tmp_path, SPACE)
    outs = [tmp_path / f"worker{i}" for i in range(WORKERS)]
    procs = [cli_process("search", arch, "--storage", URL, "--study", study_name, "--trials", TRIALS,
                         "--out", out, "--quiet", log=out.with_suffix(".log"))
             for out in outs]  # started together: on an empty database they race to create the tables
    for proc, out in zip(procs, outs):
        rc, stdout, stderr = finish(proc, out.with_suffix(".log"), timeout=300)
        assert rc == 0, stderr
        assert f"study {study_name}:" in stdout

    study = optuna.load_study(study_name=study_name, storage=URL)
    trials = study.get_trials(deepcopy=False)
    # every trial number exactly once, every trial id once
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert len({t._trial_id for t in trials}) == len(trials)
    done = [t for t in trials if t.state in FINISHED]
    assert all(t.state in FINISHED for t in trials), [t.state for t in trials]  # nothing left RUNNING
    # each worker stops once the study holds TRIALS finished trials; each may have one in flight by then
    assert TRIALS <= len(done) <= TRIALS + WORKERS
    assert study.user_attrs["objectives"] == ["maximize accuracy", "minimize params"]

    complete = [t for t in trials if t.state == S.COMPLETE]
    assert complete and len({t._trial_id for t in complete}) == len(complete)
    for t in complete:  # every trial's results are whole: values, architecture, weights of one worker
        assert t.values[1] == t.user_attrs["params"] and t.values[0] == t.user_attrs["accuracy"]
        assert t.user_attrs["weights"] == f"weights/trial{t.number}.pt"  # relative to the worker's --out
        assert sum((out / t.user_attrs["weights"]).is_file() for out in outs) == 1

    # the workers do not replay one sequence of proposals in lockstep (each architecture trained twice):
    # with --storage each seeds its sampler with its own host and process
    trained = [t for t in complete if "duplicate_of" not in t.user_attrs]
    hashes = [t.user_attrs["ir_hash"] for t in trained]
    twins = [h for h in hashes if hashes.count(h) > 1]
    assert len(twins) <= 4, [(t.number, t.params) for t in trained]

    # the Pareto front: non-dominated, and it dominates (or ties) every complete trial off it
    best = study.best_trials
    best_ids = {t._trial_id for t in best}
    assert best and best_ids <= {t._trial_id for t in complete}
    for b in best:
        assert not any(dominates(o.values, b.values, study.directions) for o in complete), b.number
    for t in complete:
        if t._trial_id not in best_ids:
            assert any(dominates(b.values, t.values, study.directions) or b.values == t.values for b in best)

    # and the report reads the shared study
    rc, stdout, stderr = cli("report", study_name, "--storage", URL, "--out", tmp_path / "report", "--no-test")
    assert rc == 0, stderr
    summary = json.loads((tmp_path / "report" / "pareto.json").read_text())
    unique_best = {t.number for t in best if "duplicate_of" not in t.user_attrs}
    assert {m["number"] for m in summary["pareto"]} == unique_best
    assert summary["trials"]["complete"] == len(complete)


def test_archdsl_worker_joins_the_shared_study(tmp_path, study_name):
    """`archdsl worker --storage postgresql://... --study NAME` (another machine's view: another --out, the .arch
    file gone) takes trials of the study an `archdsl search` started; every trial once, nothing RUNNING."""
    arch = write_arch(tmp_path, SPACE)
    search_and_worker(arch, URL, study_name, (tmp_path / "search", tmp_path / "worker"), trials=TRIALS)
    trials = optuna.load_study(study_name=study_name, storage=URL).get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert all(t.state in FINISHED for t in trials), [t.state for t in trials]
    assert TRIALS <= len(trials) <= TRIALS + WORKERS
    assert len({t.user_attrs["worker"] for t in trials if "worker" in t.user_attrs}) == 2
    # weights are recorded relative to the --out of the process that trained them; the worker trained some
    outs = (tmp_path / "search", tmp_path / "worker")
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete and all(any((o / t.user_attrs["weights"]).exists() for o in outs) for t in complete)
    assert list((tmp_path / "worker" / "weights").glob("trial*.pt"))
