"""`archdsl report`: pareto.json, plots, and for each Pareto trial a plain .arch that rebuilds the trial's
architecture, a PyTorch module that loads the trial's weights and reproduces its accuracies. Also the
hypervolume against a hand computation."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from searchutil import S, cli, dominates, load_study, precreate, write_arch

import archdsl
from archdsl.ir.printer import ir_hash
from archdsl.search.data import load
from archdsl.search.report import default_reference, front, hypervolume, hypervolume_history
from archdsl.search.train import evaluate

PNG = b"\x89PNG\r\n\x1a\n"

SPACE = """
model net(width = choice(4, 8, 16), depth = int(1, 2)) {
  input img[1, 8, 8]
  stem: conv(width, k = 3) >> relu
  body: repeat depth { conv(width, k = 3) >> relu }
  head: gap >> linear(10)
}

search front over digits {
  maximize accuracy(epochs = 2, lr = 0.05)
  minimize params
  trials = 6
}
"""


def hv2d(points, ref) -> float:
    """2-D hypervolume (both minimised) by a sweep, written out by hand."""
    pts = sorted(p for p in map(tuple, points) if p[0] < ref[0] and p[1] < ref[1])
    area, ceiling = 0.0, ref[1]
    for x, y in pts:
        if y < ceiling:
            area += (ref[0] - x) * (ceiling - y)
            ceiling = y
    return area


# ----- hypervolume

@pytest.mark.parametrize("points, ref, expected", [
    ([(1, 3), (2, 2), (3, 1)], (4, 4), 6.0),  # the staircase: 3 + 2 + 1
    ([(1, 3), (2, 2), (3, 1), (3, 3), (2.5, 2.5)], (4, 4), 6.0),  # dominated points add nothing
    ([(0, 0)], (1, 2), 2.0),
    ([(1, 1), (1, 1)], (2, 2), 1.0),  # a duplicate counts once
    ([(5, 0), (0, 5)], (4, 4), 0.0),  # beyond the reference on one axis
    ([(4, 1)], (4, 4), 0.0),  # on the reference: nothing dominated
    ([(-1, 0.5), (0.5, -1)], (1, 1), 2 * 0.5 + 0.5 * 2 - 0.5 * 0.5),  # two boxes minus their overlap
])
def test_hypervolume_matches_hand_computation(points, ref, expected):
    assert hv2d(points, ref) == pytest.approx(expected)
    assert hypervolume(np.array(points, dtype=float), np.array(ref, dtype=float)) == pytest.approx(expected)


def test_hypervolume_random_fronts_and_3d():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pts = rng.uniform(0, 1, size=(rng.integers(1, 12), 2))
        assert hypervolume(pts, np.array([1.0, 1.0])) == pytest.approx(hv2d(pts, (1.0, 1.0)))
    assert hypervolume(np.array([[1.0, 2.0, 3.0]]), np.array([2.0, 4.0, 6.0])) == pytest.approx(1 * 2 * 3)
    assert hypervolume(np.empty((0, 2)), np.array([1.0, 1.0])) == 0.0


def _fake_study(values: list[tuple], directions=("maximize", "minimize")):
    study = optuna.create_study(directions=list(directions))
    for v in values:
        study.add_trial(optuna.trial.create_trial(values=list(v), state=S.COMPLETE))
    return study


def test_hypervolume_history_and_reference():
    # (accuracy, params): maximise the first, minimise the second
    study = _fake_study([(0.5, 100), (0.4, 200), (0.7, 300), (0.9, 1000)])
    ref = default_reference(study)
    assert ref[0] == 0.0 and ref[1] == pytest.approx(1100, rel=1e-6)
    history = hypervolume_history(study, ref)
    assert len(history) == 4 and all(b >= a for a, b in zip(history, history[1:]))
    pts = [(-a, p) for a, p in [(0.5, 100), (0.4, 200), (0.7, 300), (0.9, 1000)]]
    for i in range(1, 5):
        assert history[i - 1] == pytest.approx(hv2d(pts[:i], tuple(ref)))
    assert history[1] == history[0]  # trial 1 is dominated by trial 0


# ----- the report of a real search

@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A 2-objective search (run through the CLI, in this process) and its report in a second folder."""
    tmp = tmp_path_factory.mktemp("report")
    arch = write_arch(tmp, SPACE)
    out, out2 = tmp / "search", tmp / "report"
    precreate(out, "front", ["maximize", "minimize"], [
        {"width": "4", "depth": 1}, {"width": "16", "depth": 2}, {"width": "4", "depth": 1},  # a duplicate
    ])
    rc, stdout, stderr = cli("search", arch, "--out", out, "--quiet", "--sampler", "random")
    assert rc == 0, stderr
    rc, stdout2, stderr = cli("report", out, "--out", out2)
    assert rc == 0, stderr
    assert "wrote" in stdout2
    return arch, out, out2, load_study(out, "front"), json.loads((out2 / "pareto.json").read_text())


def test_pareto_json_lists_each_pareto_architecture_once(searched):
    arch, out, out2, study, summary = searched
    complete = [t for t in study.trials if t.state == S.COMPLETE]
    assert summary["objectives"] == ["maximize accuracy", "minimize params"]
    assert summary["trials"]["complete"] == len(complete) == 6
    assert study.trials[2].user_attrs["duplicate_of"] == 0

    numbers = [m["number"] for m in summary["pareto"]]
    expected = {t.number for t in study.best_trials if "duplicate_of" not in t.user_attrs}
    assert sorted(numbers) == sorted(expected) and len(numbers) == len(set(numbers))
    hashes = [m["ir_hash"] for m in summary["pareto"]]
    assert len(hashes) == len(set(hashes))
    assert numbers == [t.number for t in front(study)]

    by_number = {t.number: t for t in study.trials}
    for m in summary["pareto"]:
        t = by_number[m["number"]]
        assert m["objectives"] == {"maximize accuracy": t.values[0], "minimize params": t.values[1]}
        assert m["params_choice"] == t.params
        assert m["params"] == t.user_attrs["params"] and m["macs"] == t.user_attrs["macs"]
        assert Path(m["arch"]).parent == out2 / "pareto" and Path(m["arch"]).exists()
        assert m["exact_resolution"] is True
        assert isinstance(m["test_accuracy"], float) and 0.0 <= m["test_accuracy"] <= 1.0
        # nothing complete dominates a Pareto member, by hand
        assert not any(dominates(o.values, t.values, study.directions) for o in complete)
    # and every complete trial off the front is dominated by a member (or ties one)
    members = [by_number[n] for n in numbers]
    for t in complete:
        if t.number not in numbers:
            assert any(dominates(m.values, t.values, study.directions) or m.values == t.values for m in members)


def test_plots_and_hypervolume(searched):
    arch, out, out2, study, summary = searched
    for name in ("pareto.png", "hypervolume.png", "hypervolume_time.png"):
        data = (out2 / name).read_bytes()
        assert data[:8] == PNG and len(data) > 1000, name
    complete = [t for t in study.trials if t.state == S.COMPLETE]
    ref = summary["hypervolume_reference"]
    assert ref[0] == 0.0 and ref[1] > max(t.values[1] for t in complete)
    pts = [(-t.values[0], t.values[1]) for t in complete]
    assert summary["hypervolume"] == pytest.approx(hv2d(pts, ref))
    # against wall-clock: one point per complete trial, in time order, never falling, ending at the total
    from archdsl.search.hvtime import curve

    times, hvs = curve(study, np.array(ref))
    assert len(times) == len(complete) and all(np.diff(times) >= 0) and all(np.diff(hvs) >= -1e-12)
    assert hvs[-1] == pytest.approx(hv2d(pts, ref))
    # the search wrote the same report into its own folder
    own = json.loads((out / "pareto.json").read_text())
    assert [m["number"] for m in own["pareto"]] == [m["number"] for m in summary["pareto"]]
    assert own["hypervolume"] == pytest.approx(summary["hypervolume"])


def _load_module(py: Path):
    spec = importlib.util.spec_from_file_location(f"emitted_{py.stem}_{abs(hash(str(py)))}", py)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.Model()


def test_arch_files_rebuild_and_modules_reproduce_accuracy(searched, tmp_path):
    arch, out, out2, study, summary = searched
    data = load("digits")
    by_number = {t.number: t for t in study.trials}
    for m in summary["pareto"]:
        t = by_number[m["number"]]
        text = Path(m["arch"]).read_text()
        assert "choice(" not in text and "int(" not in text
        # the .arch compiles on its own and is exactly the trial's architecture
        py = tmp_path / f"trial{t.number}.py"
        rc, stdout, stderr = cli("compile", m["arch"], "-o", py)
        assert rc == 0, stderr
        assert ir_hash(archdsl.build(archdsl.parse(Path(m["arch"])))) == t.user_attrs["ir_hash"]

        weights = torch.load(m["weights"], weights_only=True)
        for source in (Path(m["module"]), py):  # the report's module and the one `archdsl compile` wrote
            module = _load_module(source)
            module.load_state_dict(weights)
            assert evaluate(module, data.x_test, data.y_test) == pytest.approx(m["test_accuracy"], abs=1e-12)
            # and the validation accuracy the search recorded (the objective)
            assert evaluate(module, data.x_val, data.y_val) == pytest.approx(t.values[0], abs=1e-12)


def test_single_objective_report(tmp_path):
    arch = write_arch(tmp_path, SPACE.replace("  minimize params\n", "").replace("trials = 6", "trials = 3"))
    out = tmp_path / "out"
    rc, stdout, stderr = cli("search", arch, "--out", out, "--quiet", "--sampler", "random")
    assert rc == 0, stderr
    study = load_study(out, "front")
    summary = json.loads((out / "pareto.json").read_text())
    assert [m["number"] for m in summary["pareto"]] == [study.best_trial.number]
    assert "hypervolume" not in summary and not (out / "pareto.png").exists()
    assert summary["pareto"][0]["test_accuracy"] is not None


def test_report_errors(tmp_path):
    rc, _, stderr = cli("report", tmp_path / "nothing", "--out", tmp_path / "r")
    assert rc == 2 and "no study database" in stderr
