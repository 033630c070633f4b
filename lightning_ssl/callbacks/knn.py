"""kNN monitor: weighted kNN top-1 of the current backbone during pretraining, for any method with ``embed``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

from lightning_ssl.callbacks.end_of_fit import validation_due
from lightning_ssl.metrics.knn import knn_accuracy
from lightning_ssl.modules.distributed import gather


class KNNMonitor(L.Callback):
    """Collects the features that the method's ``validation_step`` returns for the evaluation split
    (val dataloader 0) and the labelled bank (val dataloader 1), gathers them from all processes and logs
    ``val/knn_top1`` (first k) and ``val/knn_top1_k{k}`` for every k.

    ``every_n_epochs=0`` disables it. Needs a datamodule whose ``val_dataloader`` returns both loaders.

    Args:
        k: Neighbours voting, one int or a list (20 and 200 in DINO's protocol); the first is ``val/knn_top1``.
        temperature: Temperature of the similarity-weighted votes, > 0 (0.07 in DINO's protocol).
        every_n_epochs: Evaluate every this many validation epochs; 0: off.
    """

    def __init__(self, k: int | Sequence[int] = (20, 200), temperature: float = 0.07, every_n_epochs: int = 1) -> None:
        ks = [k] if isinstance(k, int) else list(k)
        if not ks or min(ks) < 1:
            raise ValueError(f"k must be a positive integer or a list of them, got {k}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.ks, self.temperature, self.every_n_epochs = ks, temperature, every_n_epochs
        self._store: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def _active(self, trainer: L.Trainer) -> bool:
        return validation_due(trainer, self.every_n_epochs)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._store = {0: [], 1: []}

    def on_validation_batch_end(self, trainer, pl_module, outputs: Any, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._active(trainer) or not isinstance(outputs, dict) or "features" not in outputs:
            return
        self._store.setdefault(dataloader_idx, []).append(
            (outputs["features"].detach().float(), outputs["labels"].detach())
        )

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self._active(trainer) or not self._store.get(0) or not self._store.get(1):
            return
        feats, labels = (gather(torch.cat(t), with_grad=False) for t in zip(*self._store[0], strict=True))
        bank, bank_labels = (gather(torch.cat(t), with_grad=False) for t in zip(*self._store[1], strict=True))
        num_classes = getattr(trainer.datamodule, "num_classes", None) if trainer.datamodule is not None else None
        acc = knn_accuracy(feats, labels, bank, bank_labels, num_classes, self.ks, self.temperature)
        for i, (k, a) in enumerate(acc.items()):
            if i == 0:
                pl_module.log("val/knn_top1", a, prog_bar=True, rank_zero_only=True)
            pl_module.log(f"val/knn_top1_k{k}", a, rank_zero_only=True)
        self._store = {}
