"""Per-epoch checkpoints of a trial (OUT/trials/N/checkpoint.pt), so a killed worker's trial resumes at the
epoch it last finished instead of at epoch 0.

A checkpoint holds only tensors, numbers, strings, lists and dicts -- the model's and the optimizer's state
dicts, the gradient scaler's, the learning-rate step, the RNG states, the epoch and the validation curve so far
-- and is read back with torch.load(weights_only=True), which never unpickles arbitrary objects. A damaged or
foreign checkpoint (another architecture, another recipe) is ignored: the trial starts over.

Which checkpoint a trial resumes from: Optuna's heartbeat re-queues a dead trial's parameters as a new trial
whose system attributes name the trials it retries (`retry_history`, oldest first); the newest of those with a
checkpoint is the one. A checkpoint is removed once its trial has finished.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch


def trial_dir(out: Path, number: int) -> Path:
    return Path(out) / "trials" / str(number)


class Checkpoint:
    """Save to this trial's folder; load from it or from the newest trial this one retries."""

    def __init__(self, out: Path, number: int, retries: list[int] = (), key: dict | None = None):
        self.path = trial_dir(out, number) / "checkpoint.pt"
        self.sources = [self.path] + [trial_dir(out, n) / "checkpoint.pt" for n in reversed(list(retries))]
        self.key = dict(key or {})  # what must match for a checkpoint to be this trial's (IR hash, recipe)
        self.loaded_from: tuple[str, int] | None = None  # (path, epoch) once resumed

    def load(self) -> dict | None:
        for p in self.sources:
            if not p.exists():
                continue
            try:
                state = torch.load(p, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - damaged (a kill mid-write is excluded by the atomic save), foreign
                continue
            if isinstance(state, dict) and state.get("key") == self.key and isinstance(state.get("epoch"), int):
                self.loaded_from = (str(p), state["epoch"])
                return state
        return None

    def save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        torch.save({**state, "key": self.key}, tmp)
        os.replace(tmp, self.path)  # atomic: a kill mid-save leaves the previous epoch's checkpoint

    def remove(self) -> None:
        """The trial finished: its checkpoints (and those of the trials it retried) are no longer needed."""
        for p in self.sources:
            shutil.rmtree(p.parent, ignore_errors=True)


def rng_state(device: str) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.startswith("cuda"):
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: str) -> None:
    torch.set_rng_state(state["torch"])
    if device.startswith("cuda") and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
