"""The step timer the benchmarks share (imported as ``from timing import StepTimer`` by the scripts beside it)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch


class StepTimer(L.Callback):
    """Times training from the start of optimizer step ``warmup`` to the end of the last step, counting the items
    (images, tokens) of the timed batches, so start-up (compilation, allocator warm-up, first loads) is left out.

    Args:
        warmup: optimizer steps before the clock starts.
        count: items in a batch; default ``len(batch[1])`` (a batch of views and labels).
        sync: wait for the GPU before reading the clock (its kernels run asynchronously).
    """

    def __init__(self, warmup: int, count: Callable[[Any], int] | None = None, sync: bool = False) -> None:
        self.warmup, self.count, self.sync = warmup, count or (lambda batch: len(batch[1])), sync
        self.t0, self.t1, self.items = 0.0, 0.0, 0

    def _clock(self, trainer: L.Trainer) -> float:
        if self.sync and trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.warmup:
            self.t0 = self._clock(trainer)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step > self.warmup:
            self.items += self.count(batch)
            self.t1 = self._clock(trainer)

    @property
    def rate(self) -> float:
        """Items per second over the timed steps."""
        return self.items / max(self.t1 - self.t0, 1e-9)
