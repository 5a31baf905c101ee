"""Fixtures for the search tests; the helpers live in searchutil.py."""
from __future__ import annotations

import pytest

pytest.importorskip("optuna")
pytest.importorskip("sklearn")


@pytest.fixture
def count_training(monkeypatch):
    """Counts calls of the training loop made by trials (the real loop still runs)."""
    import archdsl.search.trial as trial_mod

    calls = []
    real = trial_mod.train

    def counted(module, data, **kw):
        calls.append(kw)
        return real(module, data, **kw)

    monkeypatch.setattr(trial_mod, "train", counted)
    return calls


@pytest.fixture(autouse=True)
def one_torch_thread(monkeypatch):
    """In-process searches train with one thread: the networks here are tiny, and on a shared 2-core machine
    two intra-op threads per process only fight (run_search sets threads = cpu_count // jobs)."""
    import os

    import torch

    threads = torch.get_num_threads()
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    yield
    torch.set_num_threads(threads)
