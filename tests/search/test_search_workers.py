"""Several worker processes on one study: `archdsl search --devices` (one process per device) and
`archdsl worker` joining a study from elsewhere with only the storage URL and the study name."""
from __future__ import annotations

import os

import pytest
from searchutil import CNN_SPACE, S, cli, load_study, search_and_worker, storage_url, write_arch

from archdsl.errors import ArchError
from archdsl.search.study import FINISHED
from archdsl.search.workers import device_list

SPACE = CNN_SPACE + """
search many over digits {
  maximize accuracy(epochs = 1)
  minimize params
}
"""
# trials long enough that a worker started a few seconds after the search (importing torch) still finds some
# left to run, on a fast quiet machine too
SLOW = SPACE.replace("epochs = 1", "epochs = 6")


def _check_study(trials, target: int, workers: int, outs) -> set:
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # each number once
    assert all(t.state in FINISHED for t in trials), [t.state for t in trials]
    assert target <= len(trials) <= target + workers  # each worker may have had one in flight at the end
    names = {t.user_attrs["worker"] for t in trials if "worker" in t.user_attrs}
    for t in trials:
        if t.state == S.COMPLETE:
            # weights are recorded relative to the --out of the process that trained them
            assert t.values[1] == t.user_attrs["params"]
            assert any((out / t.user_attrs["weights"]).exists() for out in outs), t.user_attrs["weights"]
    return names


def test_devices_run_one_worker_process_each(tmp_path):
    arch = write_arch(tmp_path, SPACE)
    rc, stdout, stderr = cli("search", arch, "--devices", "cpu,cpu", "--trials", 6, "--out", tmp_path / "out",
                             "--quiet")
    assert rc == 0, stderr
    assert "study many:" in stdout and (tmp_path / "out" / "pareto.json").exists()
    names = _check_study(load_study(tmp_path / "out", "many").get_trials(deepcopy=False), 6, 2, [tmp_path / "out"])
    assert len(names) == 2  # two processes, not threads of this one
    assert not any(n.endswith(f":{os.getpid()}") for n in names)


def test_worker_joins_a_study_from_its_stored_source(tmp_path):
    arch = write_arch(tmp_path, SLOW)
    db = tmp_path / "shared"
    db.mkdir()
    url = storage_url(db)
    search_and_worker(arch, url, "many", (tmp_path / "a", tmp_path / "b"), trials=10)
    names = _check_study(load_study(db, "many").get_trials(deepcopy=False), 10, 2, [tmp_path / "a", tmp_path / "b"])
    assert len(names) == 2
    assert list((tmp_path / "b" / "source").rglob("space.arch"))  # the worker ran the stored text


def test_worker_errors(tmp_path):
    url = storage_url(tmp_path)
    arch = write_arch(tmp_path, SPACE)
    assert cli("search", arch, "--trials", 1, "--out", tmp_path, "--quiet")[0] == 0
    rc, stdout, stderr = cli("worker", "--storage", url, "--study", "mnay", "--out", tmp_path / "w")
    assert rc == 2 and "no study 'mnay'" in stderr and "many" in stderr, stderr
    rc, stdout, stderr = cli("search", arch, "--devices", "0,gpu1", "--out", tmp_path / "x")
    assert rc == 2 and "'gpu1' is not a GPU number" in stderr, stderr


def test_device_list():
    assert device_list("0, 1,cuda:3,cpu") == ["cuda:0", "cuda:1", "cuda:3", "cpu"]
    with pytest.raises(ArchError):
        device_list(",")
