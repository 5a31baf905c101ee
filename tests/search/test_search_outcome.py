"""What a finished search leaves: a run where nothing completed says why and fails; each architecture once on
the Pareto front; objective names and learning curves for optuna-dashboard; a report that reads trial
artifacts only from inside the study folder, wherever that folder has moved."""
from __future__ import annotations

import json
import pickle
import shutil
import sqlite3

import optuna
import pytest
import torch
from searchutil import S, cli, load_study, storage_url, write_arch

from archdsl.search.report import front, write_report

MODEL = """
model net(width = choice(4, 8)) {
  input img[1, 8, 8]
  stem: conv(width, k = 3) >> relu
  head: gap >> linear(10)
}
"""


def _arch(tmp_path, body: str):
    return write_arch(tmp_path, MODEL + f"\nsearch s over digits {{\n{body}\n}}\n")


def test_run_where_nothing_completes_says_why_and_fails(tmp_path):
    arch = _arch(tmp_path, "  maximize accuracy(epochs = 1)\n  constraint params < 10\n  trials = 2")
    out = tmp_path / "out"
    rc, stdout, stderr = cli("search", arch, "--out", out, "--quiet")
    assert rc == 2, stderr
    line = next(i for i, s in enumerate(arch.read_text().splitlines(), 1) if "constraint" in s)
    assert "error: none of the 2 trials of this run completed: 2x infeasible: constraint at " \
           f"{arch}:{line}:" in stderr, stderr
    assert "not met (e.g. params=" in stderr
    summary = json.loads((out / "pareto.json").read_text())  # the report still says what happened
    assert summary["trials"]["pruned"] == 2 and summary["pareto"] == []


def _add(study, values, h, **attrs):
    study.add_trial(optuna.trial.create_trial(values=values, user_attrs={"ir_hash": h, **attrs}))


def test_same_architecture_once_on_the_front(tmp_path):
    """Two workers that trained the same architecture at once both complete it (neither is a duplicate of
    the other): the front and pareto.json list it once, as its first trial."""
    out = tmp_path / "out"
    out.mkdir()
    study = optuna.create_study(study_name="s", storage=storage_url(out), directions=["maximize", "minimize"])
    _add(study, [0.9, 100], "a")
    _add(study, [0.9, 100], "a")  # the same architecture, trained by another worker
    _add(study, [0.8, 50], "b")
    _add(study, [0.7, 200], "c")  # dominated by both
    _add(study, [0.8, 50], "b", duplicate_of=2)  # a recognised duplicate (values copied)
    assert [t.number for t in front(study)] == [2, 0]
    summary = write_report(study, out / "report")
    assert [m["number"] for m in summary["pareto"]] == [2, 0]
    assert json.loads((out / "report" / "pareto.json").read_text())["pareto"] == summary["pareto"]


@pytest.mark.parametrize("objectives, curves_as_intermediate", [
    ("  maximize accuracy(epochs = 2)", True),
    ("  maximize accuracy(epochs = 2)\n  minimize params", False),
])
def test_objective_names_and_learning_curves(tmp_path, objectives, curves_as_intermediate):
    arch = _arch(tmp_path, objectives + "\n  trials = 2")
    out = tmp_path / "out"
    rc, _, stderr = cli("search", arch, "--out", out, "--quiet", "--sampler", "random")
    assert rc == 0, stderr
    study = load_study(out, "s")
    assert study.metric_names == [line.split()[1].split("(")[0] for line in objectives.splitlines()]
    complete = [t for t in study.trials if t.state == S.COMPLETE and "duplicate_of" not in t.user_attrs]
    assert complete
    for t in complete:
        curve = t.user_attrs["val_curve"]
        assert len(curve) == 2 and curve[-1] == t.values[0]  # one validation accuracy per epoch
        # Optuna refuses trial.report() in a multi-objective study: there the curve is the val_curve attribute
        assert t.intermediate_values == ({0: curve[0], 1: curve[1]} if curves_as_intermediate else {})


# ----- trust: the study database names files; the report reads only the study folder's own

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finished")
    arch = _arch(tmp, "  maximize accuracy(epochs = 1)\n  trials = 1")
    rc, _, stderr = cli("search", arch, "--out", tmp / "out", "--quiet")
    assert rc == 0, stderr
    return tmp / "out"


def _copy(finished, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    (trial,) = load_study(out, "s").trials
    return out, trial


def _set_weights_attr(out, value: str) -> None:
    """Edit the stored attribute as anyone with the file could."""
    con = sqlite3.connect(out / "study.db")
    with con:
        con.execute("UPDATE trial_user_attributes SET value_json = ? WHERE key = 'weights'", (json.dumps(value),))
    con.close()


def test_weights_are_recorded_relative_to_the_study_folder(finished):
    (trial,) = load_study(finished, "s").trials
    assert trial.user_attrs["weights"] == "weights/trial0.pt" and (finished / "weights" / "trial0.pt").is_file()


def test_moved_study_reads_its_own_weights_never_the_original(tmp_path, finished):
    out, trial = _copy(finished, tmp_path)
    # make the copy's weights differ from the original run's, so the report shows which it read
    state = torch.load(out / "weights" / "trial0.pt", weights_only=True)
    torch.save({k: v + 1 for k, v in state.items()}, out / "weights" / "trial0.pt")
    for recorded in ("weights/trial0.pt", str(finished / "weights" / "trial0.pt")):  # as now, as archdsl 0.x did
        _set_weights_attr(out, recorded)
        rc, _, stderr = cli("report", out, "--out", tmp_path / "rep", "--no-test")
        assert rc == 0, stderr
        copied = (tmp_path / "rep" / "pareto" / "trial0.pt").read_bytes()
        assert copied == (out / "weights" / "trial0.pt").read_bytes()
        assert copied != (finished / "weights" / "trial0.pt").read_bytes()


@pytest.mark.parametrize("recorded", ["../../../../../../etc/hostname", "weights/../study.db", "/etc/hostname"])
def test_report_never_reads_a_file_outside_the_study_folder(tmp_path, finished, recorded):
    out, _ = _copy(finished, tmp_path)
    _set_weights_attr(out, recorded)
    rc, _, stderr = cli("report", out, "--out", tmp_path / "rep", "--no-test")
    if recorded.startswith("/"):  # an absolute path is looked up by its name under weights/: not there
        assert rc == 0, stderr
    else:
        assert rc == 2 and "leads outside the study folder" in stderr and "Traceback" not in stderr, stderr
    assert not (tmp_path / "rep" / "pareto" / "trial0.pt").exists()


class _Payload:
    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_rejected_weights_file_is_a_clear_error(tmp_path, finished):
    out, _ = _copy(finished, tmp_path)
    payload = _Payload()
    payload.marker = tmp_path / "code-ran"
    torch.save({"x": payload}, out / "weights" / "trial0.pt")  # what torch.load would run without weights_only
    rc, _, stderr = cli("report", out, "--out", tmp_path / "rep")
    assert rc == 2, stderr
    assert "cannot load the weights" in stderr and "Traceback" not in stderr
    assert not payload.marker.exists()
    with pytest.raises(pickle.UnpicklingError):  # (the file really is a pickle that runs code)
        torch.load(out / "weights" / "trial0.pt", weights_only=True)


def test_report_from_a_storage_url_reads_weights_only_from_the_folder_given(tmp_path, finished):
    out, _ = _copy(finished, tmp_path)
    url = storage_url(out)
    rc, _, stderr = cli("report", "s", "--storage", url, "--out", tmp_path / "bare", "--no-test")
    assert rc == 0, stderr
    assert not (tmp_path / "bare" / "pareto" / "trial0.pt").exists()  # no folder given: no file read
    rc, _, stderr = cli("report", "s", "--storage", url, "--weights-from", out, "--out", tmp_path / "rep", "--no-test")
    assert rc == 0, stderr
    assert (tmp_path / "rep" / "pareto" / "trial0.pt").read_bytes() == (out / "weights" / "trial0.pt").read_bytes()
