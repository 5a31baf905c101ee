"""Training data through torch.utils.data: a split is a map-style Dataset indexed by whole batches.

A split's `__getitem__` takes `(key, rows)` -- a batch of row numbers and a seed -- and returns `(x, y)` for
the batch. The sampler (`EpochBatches`) draws the batches in the main process; with `workers = N` the
DataLoader's worker processes build them (decode images, augment) while the model trains. Indexing by batch
keeps the in-memory data sets (MNIST-1D, digits) as fast as slicing tensors (one gather per batch, not one
Python call per sample), and the per-batch seed makes augmentation depend on (trial seed, epoch, batch) only:
the same with 0 or 8 workers, and again after a killed trial resumes at an epoch.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (a stable hash: Python's hash() of ints would be too regular)."""
    h = hashlib.blake2b(np.asarray(parts, dtype=np.int64).tobytes(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


class ArraySplit(torch.utils.data.Dataset):
    """Rows `rows` of arrays x, y: tensors in memory, or numpy memory maps read batch by batch."""

    def __init__(self, x, y, rows=None):
        self.x, self.y = x, y
        self.rows = np.arange(len(y)) if rows is None else np.asarray(rows, dtype=np.int64)
        self._in_memory = isinstance(x, torch.Tensor)
        if self._in_memory:
            self._trows = torch.from_numpy(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, batch):
        _, idx = batch
        if self._in_memory:
            r = self._trows[idx]
            return self.x[r], self.y[r]
        r = np.sort(self.rows[np.asarray(idx)])  # sorted reads of a memory map; order within a batch is free
        x = torch.from_numpy(np.ascontiguousarray(self.x[r], dtype=np.float32))
        return x, torch.from_numpy(np.asarray(self.y[r], dtype=np.int64))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self[(0, np.arange(len(self)))]

    def sample_shape(self) -> tuple:
        return tuple(self.x.shape[1:])


class EpochBatches(Sampler):
    """Batches of row numbers for one epoch, each with its own seed; shuffled from (seed, epoch) when
    `shuffle`, so an epoch's order does not depend on what ran before it (a resumed trial sees the same)."""

    def __init__(self, n: int, batch: int, shuffle: bool, seed: int = 0):
        self.n, self.batch, self.shuffle, self.seed, self.epoch = n, batch, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.n // self.batch)

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(_mix(self.seed, self.epoch)))
        else:
            order = torch.arange(self.n)
        for b, i in enumerate(range(0, self.n, self.batch)):
            yield _mix(self.seed, self.epoch, b), order[i:i + self.batch]


def loader(split, batch: int, shuffle: bool, seed: int = 0, workers: int = 0, pin_memory: bool = False):
    """A DataLoader over a batch-indexed split (batch_size=None: the split builds whole batches)."""
    sampler = EpochBatches(len(split), batch, shuffle, seed)
    return DataLoader(split, sampler=sampler, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)
