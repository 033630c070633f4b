"""Reproducible, resumable sampling.

``SeededSampler`` shuffles with a permutation that depends only on (seed, epoch), splits it over processes,
and hands each index to the dataset together with an augmentation seed derived from (seed, epoch, index), so
the views of an image are the same whatever the worker, the number of workers or processes, or whether the
run was resumed. ``ResumableDataLoader`` remembers how many batches of the current epoch it has handed out;
Lightning saves that in checkpoints (``state_dict``) and a run resumed from a mid-epoch checkpoint continues
with the next batch instead of starting the epoch over.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_ssl.modules.distributed import rank, world_size


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64-style mixing), stable across runs and platforms."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return x >> 1


class SeededSampler(DistributedSampler):
    """Epoch-seeded shuffling (a ``DistributedSampler``, so Lightning keeps it under DDP) that yields
    ``(index, augmentation_seed)`` pairs. Works on one process too (num_replicas=1).

    Args:
        dataset: The dataset to sample from (its length).
        seed: Seed of the shuffling and of every item's augmentation seed.
        shuffle: Shuffle every epoch (by (seed, epoch)); False: in order.
        drop_last: Drop the tail that does not fill all processes evenly.
    """

    def __init__(self, dataset: Dataset, seed: int = 0, shuffle: bool = True, drop_last: bool = True) -> None:
        super().__init__(
            dataset, num_replicas=world_size(), rank=rank(), shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        self.start = 0  # samples of this epoch already consumed (set when resuming mid-epoch)
        self._start_epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        if epoch != self._start_epoch:
            self.start = 0
        super().set_epoch(epoch)

    def resume_at(self, epoch: int, samples_consumed: int) -> None:
        self.epoch, self.start, self._start_epoch = epoch, samples_consumed, epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self.start :]
        epoch = self.epoch
        return iter([(i, mix_seed(self.seed, epoch, i)) for i in indices])

    def __len__(self) -> int:
        # the whole epoch's length, also when resuming mid-epoch: Lightning counts the batches already done in its
        # restored progress and reads the length after restoring the loader when it builds the loader late
        # (``max_steps`` runs); the remaining length would end every later epoch early
        return super().__len__()


class ResumableDataLoader(DataLoader):
    """A DataLoader over a ``SeededSampler`` that can continue mid-epoch after a restart."""

    sampler: SeededSampler  # checked in __init__
    batch_size: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, SeededSampler):
            raise TypeError("ResumableDataLoader needs a SeededSampler")
        if self.batch_size is None:
            raise ValueError("ResumableDataLoader needs a batch_size: it resumes by counting whole batches")
        self._yielded = 0
        self._offset = 0

    def __iter__(self):
        self._offset, self._yielded = self.sampler.start // self.batch_size, 0
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches": self._offset + self._yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.resume_at(int(state["epoch"]), int(state["batches"]) * self.batch_size)


def seed_worker_rng(seed: int) -> None:
    """Seed the RNGs a transform may draw from (torch here; v2 and kornia use only torch)."""
    torch.manual_seed(seed)
