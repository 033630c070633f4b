"""Loggers: Weights & Biases that works without network access by default, and a CSV logger that appends."""

from __future__ import annotations

import csv
import os
from typing import Any

from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers import WandbLogger as _WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter as _ExperimentWriter


class WandbLogger(_WandbLogger):
    """Lightning's ``WandbLogger``, offline unless asked otherwise.

    ``offline=None`` (default) means offline unless the environment says ``WANDB_MODE=online`` (or
    ``LIGHTNING_SSL_WANDB=online``). Offline runs are written under ``save_dir/wandb`` and can be uploaded
    later with ``wandb sync``.
    """

    def __init__(self, project: str = "lightning-ssl", save_dir: str = "outputs", offline: bool | None = None,
                 log_model: bool = False, **kwargs: Any) -> None:
        if offline is None:
            mode = os.environ.get("LIGHTNING_SSL_WANDB", os.environ.get("WANDB_MODE", "offline"))
            offline = mode != "online"
        os.makedirs(save_dir, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")
        super().__init__(project=project, save_dir=save_dir, offline=offline, log_model=log_model, **kwargs)


class CSVLogger(_CSVLogger):
    """Lightning's ``CSVLogger`` that keeps what a run already wrote: a run resumed into its own directory
    (``--ckpt_path last``) appends to its ``metrics.csv`` instead of deleting it (Lightning's writer removes an
    existing file)."""

    @property
    def experiment(self) -> _ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class _AppendingWriter(_ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):  # continue the file: its columns are the header so far
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))
