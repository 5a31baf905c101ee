"""A worker killed with SIGKILL in the middle of a trial's training resumes that trial, on the next run, from
the last epoch it checkpointed (OUT/trials/N/checkpoint.pt) -- not from epoch 0 -- and the resumed training
ends exactly where uninterrupted training would (same shuffles, same RNG, same schedule)."""
from __future__ import annotations

import signal
import time

import pytest
import torch
from searchutil import CNN_SPACE, S, cli_process, finish, load_study, precreate, search, write_arch

from archdsl.search.checkpoint import Checkpoint
from archdsl.search.study import FINISHED

GRACE = 3
ENV = {"ARCHDSL_HEARTBEAT_GRACE": str(GRACE), "ARCHDSL_HEARTBEAT_INTERVAL": "1"}
EPOCHS = 8
SPACE = CNN_SPACE + f"""
search ckpt over digits {{
  maximize accuracy(epochs = {EPOCHS})
  trials = 3
}}
"""


def _checkpoint_epoch(path) -> int | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["epoch"]
    except Exception:  # not written yet, or being replaced
        return None


def _start_and_kill(arch, out, log, timeout=200.0):
    """Start the search; SIGKILL it once a running trial has checkpointed 2 epochs. Returns (trial number,
    checkpointed epoch at the kill) or None when the search finished first."""
    proc = cli_process("search", arch, "--out", out, "--quiet", "--sampler", "random", env=ENV, log=log)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            for p in sorted((out / "trials").glob("*/checkpoint.pt")) if (out / "trials").exists() else []:
                epoch = _checkpoint_epoch(p)
                if epoch is not None and 2 <= epoch < EPOCHS - 1:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=30)
                    return int(p.parent.name), _checkpoint_epoch(p)
            time.sleep(0.02)
        return None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_killed_trial_resumes_from_its_last_epoch(tmp_path):
    arch = write_arch(tmp_path, SPACE)
    out = tmp_path / "out"
    killed = None
    for attempt in range(3):
        killed = _start_and_kill(arch, out, tmp_path / f"killed{attempt}")
        if killed is not None:
            break
    assert killed is not None, "the search finished before a trial could be killed mid-training"
    number, epoch = killed
    before = {t.number: t for t in load_study(out, "ckpt").get_trials(deepcopy=True)}
    assert before[number].state == S.RUNNING

    time.sleep(GRACE + 0.5)  # the killed trial's heartbeat is now stale
    rc, stdout, stderr = finish(cli_process("search", arch, "--out", out, "--quiet", "--sampler", "random",
                                            env=ENV, log=tmp_path / "resumed"), tmp_path / "resumed", timeout=300)
    assert rc == 0, stderr
    trials = load_study(out, "ckpt").get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    assert sorted(by_number) == list(range(len(trials)))  # no number lost or doubled
    assert all(t.state in FINISHED for t in trials)
    for n, t in before.items():  # what finished before the kill is unchanged
        if t.state == S.COMPLETE:
            assert by_number[n].state == S.COMPLETE and by_number[n].values == t.values

    retry = [t for t in trials if t.system_attrs.get("failed_trial") == number]
    assert len(retry) == 1 and by_number[number].state == S.FAIL
    retry = retry[0]
    assert retry.params == before[number].params
    assert retry.user_attrs["resumed_from"]["epoch"] == epoch
    if retry.state == S.COMPLETE:
        assert retry.user_attrs["epochs_trained"] == EPOCHS - epoch  # not EPOCHS: it resumed
        assert len(retry.user_attrs["val_curve"]) == EPOCHS
        assert not (out / "trials" / str(retry.number)).exists()  # a finished trial's checkpoint is removed
        assert not (out / "trials" / str(number)).exists()

        # the same architecture trained without a kill reaches the same validation curve (within two of the 287
        # validation images: threaded float reductions are not bit-reproducible between processes)
        fresh = tmp_path / "fresh"
        precreate(fresh, "ckpt", ["maximize"], [retry.params])
        study = search(arch, fresh, trials=1)
        assert study.trials[0].user_attrs["val_curve"] == pytest.approx(retry.user_attrs["val_curve"], abs=0.008)
        assert study.trials[0].user_attrs["epochs_trained"] == EPOCHS


def test_a_checkpoint_of_another_architecture_is_not_resumed(tmp_path):
    ckpt = Checkpoint(tmp_path, 3, key={"ir_hash": "aaa"})
    ckpt.save({"epoch": 2, "history": [0.1, 0.2]})
    assert Checkpoint(tmp_path, 5, retries=[3], key={"ir_hash": "aaa"}).load()["history"] == [0.1, 0.2]
    assert Checkpoint(tmp_path, 5, retries=[3], key={"ir_hash": "bbb"}).load() is None
    (tmp_path / "trials" / "3" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert Checkpoint(tmp_path, 5, retries=[3], key={"ir_hash": "aaa"}).load() is None  # damaged: start over
