"""A joint t-SNE/UMAP picture of image and text embeddings during image-text pretraining (CLIP)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightning_ssl.callbacks.end_of_fit import validation_due
from lightning_ssl.callbacks.images import log_picture
from lightning_ssl.metrics.zeroshot import clip_embedding_plot
from lightning_ssl.modules.distributed import gather
from lightning_ssl.runs import log_dir, logged_epoch, logged_step


class CLIPEmbeddingPlot(L.Callback):
    """Collects the ``image_emb``, ``text_emb`` and ``labels`` that ``CLIP.validation_step`` returns for the
    held-out pairs (val dataloader 0), and every ``every_n_epochs`` epochs (counted like the kNN monitor) draws
    one 2-D embedding of both, coloured by class (``metrics.zeroshot.clip_embedding_plot``). The PNG is saved in
    ``dirpath`` (default: the logger's directory, else ``default_root_dir``) as ``clip_embeddings_e{epoch}.png``
    and logged as ``val/clip_embeddings`` to a logger with ``log_image`` (W&B). ``every_n_epochs=0`` disables it.

    Args:
        every_n_epochs: Draw every this many epochs; 0: off.
        method: ``"tsne"`` or ``"umap"`` (UMAP needs ``umap-learn``).
        max_points: Most image-text pairs plotted.
        dirpath: Folder of the PNGs; None: the logger's directory, else ``default_root_dir``.
    """

    def __init__(
        self, every_n_epochs: int = 1, method: str = "tsne", max_points: int = 1000, dirpath: str | None = None
    ) -> None:
        if method not in ("tsne", "umap"):
            raise ValueError(f"method must be 'tsne' or 'umap', got {method!r}")
        self.every_n_epochs, self.method, self.max_points, self.dirpath = every_n_epochs, method, max_points, dirpath
        self._store: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.last_path: Path | None = None

    def _active(self, trainer: L.Trainer) -> bool:
        return validation_due(trainer, self.every_n_epochs)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._store = []

    def on_validation_batch_end(self, trainer, pl_module, outputs: Any, batch, batch_idx, dataloader_idx=0) -> None:
        if (
            dataloader_idx != 0
            or not self._active(trainer)
            or not isinstance(outputs, dict)
            or "text_emb" not in outputs
        ):
            return
        self._store.append(
            (outputs["image_emb"].detach().float(), outputs["text_emb"].detach().float(), outputs["labels"].detach())
        )

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self._store or not self._active(trainer):
            return
        img, txt, labels = (gather(torch.cat(t), with_grad=False).cpu() for t in zip(*self._store, strict=True))
        self._store = []
        if trainer.global_rank != 0:
            return
        folder = Path(self.dirpath) if self.dirpath else log_dir(trainer)
        names = getattr(trainer.datamodule, "class_names", None) if trainer.datamodule is not None else None
        self.last_path = clip_embedding_plot(
            img,
            txt,
            labels,
            folder / f"clip_embeddings_e{logged_epoch(trainer):03d}.png",
            self.method,
            names,
            self.max_points,
            title=f"{self.method.upper()} of images (o) and captions (x), epoch {logged_epoch(trainer)}, "
            f"step {logged_step(trainer)}",
        )
        log_picture(
            trainer, "val/clip_embeddings", self.last_path, f"{self.method.upper()}, epoch {logged_epoch(trainer)}"
        )
