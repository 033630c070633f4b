"""Weights & Biases logging that works without network access by default."""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.loggers import WandbLogger as _WandbLogger


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
