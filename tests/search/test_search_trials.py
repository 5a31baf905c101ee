"""One trial's life: infeasible architectures are pruned before training, duplicates reuse the earlier
result, and a broken training run fails the trial without stopping the study."""
from __future__ import annotations

from pathlib import Path

import pytest
from searchutil import S, cli, finished, load_study, precreate, search, write_arch

import archdsl.search.trial as trial_mod
from archdsl.search.study import RunEnded
from archdsl.search.train import TrialFailed

INFEASIBLE = """
model net(k = choice(3, 9), width = choice(4, 64)) {
  input img[1, 8, 8]
  stem: conv(width, k = k, padding = 0) >> relu
  head: gap >> linear(10)
}

search infeasible over digits {
  maximize accuracy(epochs = 1)
  constraint params < 1k
  trials = 3
}
"""


def test_infeasible_trials_are_pruned_with_reason_and_never_trained(tmp_path, count_training):
    arch = write_arch(tmp_path, INFEASIBLE)
    out = tmp_path / "out"
    precreate(out, "infeasible", ["maximize"], [
        {"k": "9", "width": "4"},  # a 9x9 kernel on an unpadded 8x8 image: no architecture at all
        {"k": "3", "width": "64"},  # 64 channels: 1.3k parameters, over the constraint
        {"k": "3", "width": "4"},  # feasible
    ])
    study = search(arch, out)
    shape, big, ok = study.trials
    assert [t.state for t in study.trials] == [S.PRUNED, S.PRUNED, S.COMPLETE]

    # the shape error, where it happens in the file
    reason = shape.user_attrs["infeasible"]
    assert f"{arch}:3:" in reason and "kernel 9" in reason
    # the violated constraint, where it is written, with the measured value
    reason = big.user_attrs["infeasible"]
    assert reason.startswith(f"constraint at {arch}:9:") and "not met" in reason and "params=" in reason
    assert big.user_attrs["params"] >= 1000

    for t in (shape, big):  # pruned before any training: no accuracy, no weights, no learning curve
        assert t.values is None
        assert not {"accuracy", "weights", "val_curve"} & set(t.user_attrs), t.user_attrs
        assert not (out / "weights" / f"trial{t.number}.pt").exists()
    assert len(count_training) == 1  # only the feasible trial trained
    assert ok.user_attrs["params"] < 1000 and (out / ok.user_attrs["weights"]).is_file()
    assert ok.value == ok.user_attrs["accuracy"]


def test_wrong_input_shape_for_the_data_set_stops_before_the_study(tmp_path, count_training):
    """Not one infeasible trial per point of the space and exit 0: the default architecture's input is checked
    against the data set before the study starts (status 2, the input line, the data set's shape)."""
    arch = write_arch(tmp_path, """
        model net(width = choice(4, 8)) {
          input seq[1, 40]
          stem: conv(width, k = 3) >> relu
          head: gap >> linear(10)
        }
        search wrong over digits {
          maximize accuracy(epochs = 1)
          trials = 2
        }
    """)
    rc, stdout, stderr = cli("search", arch, "--out", tmp_path / "out", "--quiet")
    assert rc == 2, stderr
    assert stderr.startswith(f"{arch}:2:3: error: the model's input is [1, 40] but data set 'digits' has samples "
                             f"of shape [1, 8, 8]"), stderr
    assert not (tmp_path / "out" / "study.db").exists()  # no study was started
    assert count_training == []


DEDUPE = """
model net(width = choice(4, 8), unused = float(0.0, 1.0)) {
  input img[1, 8, 8]
  stem: conv(width, k = 3) >> relu
  head: gap >> linear(10)
}

search dedupe over digits {
  maximize accuracy(epochs = 1)
  minimize params
  trials = 4
}
"""


def test_duplicate_architectures_reuse_the_first_result(tmp_path, count_training):
    arch = write_arch(tmp_path, DEDUPE)
    out = tmp_path / "out"
    precreate(out, "dedupe", ["maximize", "minimize"], [
        {"width": "8", "unused": 0.25},
        {"width": "8", "unused": 0.25},  # the same parameters again
        {"width": "8", "unused": 0.75},  # other parameters, same architecture (the float changes nothing)
        {"width": "4", "unused": 0.25},  # another architecture
    ])
    study = search(arch, out)
    first, again, same_arch, other = study.trials
    assert all(t.state == S.COMPLETE for t in study.trials)
    assert len(count_training) == 2  # trials 0 and 3 only

    for dup in (again, same_arch):
        assert dup.user_attrs["duplicate_of"] == first.number
        assert dup.values == first.values
        assert dup.user_attrs["ir_hash"] == first.user_attrs["ir_hash"]
        for k in ("accuracy", "params", "macs", "weights", "val_curve"):
            assert dup.user_attrs[k] == first.user_attrs[k], k
        assert "seconds" not in dup.user_attrs  # returned before any measuring
    assert not (out / "weights" / f"trial{again.number}.pt").exists()
    assert "duplicate_of" not in other.user_attrs and other.user_attrs["ir_hash"] != first.user_attrs["ir_hash"]


def test_single_point_space_trains_once(tmp_path, count_training):
    arch = write_arch(tmp_path, """
        model net(width = choice(6)) {
          input img[1, 8, 8]
          stem: conv(width, k = 3) >> relu
          head: gap >> linear(10)
        }
        search one over digits {
          maximize accuracy(epochs = 1)
          trials = 3
        }
    """)
    study = search(arch, tmp_path / "out")
    t0, t1, t2 = study.trials
    assert len(count_training) == 1
    assert t1.user_attrs["duplicate_of"] == t2.user_attrs["duplicate_of"] == t0.number
    assert t0.value == t1.value == t2.value


NAN = """
model net(width = choice(4, 8)) {
  input img[1, 8, 8]
  stem: conv(width, k = 3) >> relu
  head: gap >> linear(10)
}

search nan over digits {
  maximize accuracy(epochs = 1, lr = 1e9)
  trials = 3
}
"""


def test_nan_loss_fails_the_trial_and_the_study_finishes(tmp_path):
    arch = write_arch(tmp_path, NAN)
    # every trial fails: the run still goes through all 3, then says why
    with pytest.raises(RunEnded, match="none of the 3 trials of this run completed: 3x failed: TrialFailed") as e:
        search(arch, tmp_path / "out", sampler="random")
    trials = finished(e.value.results[0])
    assert len(trials) == 3
    for t in trials:
        assert t.state == S.FAIL and t.values is None
        assert "loss became" in t.user_attrs["error"] and "TrialFailed" in t.user_attrs["error"]
        assert "weights" not in t.user_attrs and "accuracy" not in t.user_attrs


def test_a_failing_trial_does_not_stop_the_study(tmp_path, monkeypatch):
    arch = write_arch(tmp_path, DEDUPE.replace("trials = 4", "trials = 4"))
    real = trial_mod.train
    calls = []

    def flaky(module, data, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise TrialFailed("out of memory: simulated")
        if len(calls) == 2:
            raise RuntimeError("CUDA error: simulated")
        return real(module, data, **kw)

    monkeypatch.setattr(trial_mod, "train", flaky)
    out = tmp_path / "out"
    precreate(out, "dedupe", ["maximize", "minimize"],
              [{"width": "8", "unused": 0.1}, {"width": "4", "unused": 0.1}, {"width": "8", "unused": 0.2},
               {"width": "4", "unused": 0.9}])
    study = search(arch, out)
    states = [t.state for t in study.trials]
    assert states == [S.FAIL, S.FAIL, S.COMPLETE, S.COMPLETE]
    assert study.trials[0].user_attrs["error"] == "TrialFailed: out of memory: simulated"
    assert study.trials[1].user_attrs["error"].startswith("RuntimeError: CUDA error")
    # a failed trial is no result to copy: the same architecture trains again
    assert "duplicate_of" not in study.trials[2].user_attrs and "duplicate_of" not in study.trials[3].user_attrs
    assert len(calls) == 4
    # the study counts failures as finished: the requested 4 trials, not more
    again = search(arch, out)
    assert len(again.trials) == 4


WIDE = """
model net(width = choice(4, 5, 6, 7, 8, 9, 10, 11), depth = int(1, 4)) {
  input img[1, 8, 8]
  stem: conv(width, k = 3) >> relu
  body: repeat depth { conv(width, k = 3) >> relu }
  head: gap >> linear(10)
}

search wide over digits {
  minimize params
  trials = 4
}
"""


@pytest.mark.parametrize("sampler", ["random", "tpe", "nsga2", "evolution"])
def test_more_trials_resume_the_same_study_without_replaying_it(tmp_path, sampler):
    arch = write_arch(tmp_path, WIDE)
    out = tmp_path / "out"
    search(arch, out, sampler=sampler)
    before = {t.number: (t.params, t.values) for t in load_study(out, "wide").trials}
    assert len(before) == 4
    study = search(arch, out, trials=8, sampler=sampler)
    assert len(finished(study)) == 8
    assert {t.number: (t.params, t.values) for t in study.trials if t.number in before} == before
    # the resumed run's sampler does not start its sequence over (which would propose trials 0-3 again)
    first = [t.params for t in study.trials[:4]]
    resumed = [t.params for t in study.trials[4:]]
    assert resumed != first
    assert sum("duplicate_of" in t.user_attrs for t in study.trials[4:]) < (1 if sampler == "evolution" else 4)
    if sampler == "random":  # and a fresh study with the same seed is the same study
        again = search(arch, tmp_path / "again", sampler=sampler)
        assert [t.params for t in again.trials] == first


@pytest.mark.parametrize("objective", ["synflow", "naswot", "grad_norm"])
def test_proxy_objective_runs_without_training(tmp_path, count_training, objective):
    arch = write_arch(tmp_path, f"""
        model net(width = choice(4, 8), depth = int(1, 2)) {{
          input img[1, 8, 8]
          stem: conv(width, k = 3) >> relu
          body: repeat depth {{ conv(width, k = 3) >> relu }}
          head: gap >> linear(10)
        }}
        search proxy over digits {{
          maximize {objective}
          minimize params
          trials = 4
        }}
    """)
    study = search(arch, tmp_path / "out", sampler="random")
    assert count_training == []
    assert [t.state for t in study.trials] == [S.COMPLETE] * 4
    for t in study.trials:
        assert t.values[0] == pytest.approx(t.user_attrs[objective])
        assert t.values[1] == t.user_attrs["params"]
        assert "weights" not in t.user_attrs and "accuracy" not in t.user_attrs
