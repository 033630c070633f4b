"""``lightning-ssl``: a LightningCLI for every method and datamodule of the library (fit/validate/test/predict).

What is added to the plain LightningCLI:

* **Data facts flow to the model.** ``image_size``, ``channels`` (as ``in_channels``) and ``num_classes`` of the
  datamodule are written into every component of the model config whose constructor takes a parameter of that
  name (the backbone, a classifier head, ...), so a YAML names an architecture without repeating the dataset.
  They are written into the config itself, so ``config.yaml`` and the checkpoint's hyperparameters hold them.
  A value set on purpose that contradicts the data (``in_channels: 1`` for RGB data) is an error naming both.
* **Precision for the machine**: ``trainer.precision: auto`` (the default; ``lightning_ssl.trainer.Trainer``)
  resolves to bf16-mixed where the hardware computes bf16 natively and 32-true on other CPUs, and says why.
* **A time budget**: ``budget.minutes`` trains for that long, with the schedules ending at the budget's end.
* **Monitoring and safety callbacks are always there**, configured at the top level: ``knn:`` (KNNMonitor),
  ``probe:`` (OnlineLinearProbe), ``collapse:`` (CollapseMonitor), ``nonfinite:`` (NonFiniteGuard) and
  ``checkpoint:`` (ModelCheckpoint, ``save_last: true`` so ``--ckpt_path last`` resumes). Turn the monitors off
  with ``knn.every_n_epochs: 0``, ``probe.enabled: false``, ``collapse.every_n_steps: 0``; speed switches
  under ``performance:`` (``channels_last``, ``compile``).
* **Safe checkpoints**: written atomically (``AtomicCheckpointIO``) and loaded with ``weights_only=True``.
* ``trainer.sync_batchnorm: true`` also works on CPU (``DistributedBatchNorm`` over gloo).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm

import lightning_ssl.data  # noqa: F401  (registers the datamodules so configs can name them briefly)
import lightning_ssl.eval.finetune  # noqa: F401
import lightning_ssl.loggers  # noqa: F401
import lightning_ssl.methods  # noqa: F401
import lightning_ssl.modules.pretrained  # noqa: F401
from lightning_ssl.callbacks import CollapseMonitor, KNNMonitor, NonFiniteGuard, OnlineLinearProbe
from lightning_ssl.callbacks.budget import TimeBudget
from lightning_ssl.callbacks.performance import Performance
from lightning_ssl.checkpoint import AtomicCheckpointIO
from lightning_ssl.config import DATA_TO_MODEL, import_class, inject, to_dict
from lightning_ssl.modules.sync_bn import DistributedBatchNormSync
from lightning_ssl.trainer import Trainer


class SSLCLI(LightningCLI):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("trainer_class", Trainer)
        super().__init__(L.LightningModule, L.LightningDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(KNNMonitor, "knn")
        parser.add_lightning_class_args(OnlineLinearProbe, "probe")
        parser.add_lightning_class_args(CollapseMonitor, "collapse")
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
        parser.add_lightning_class_args(Performance, "performance")
        parser.add_lightning_class_args(TimeBudget, "budget")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.filename": "epoch{epoch:03d}",
                             "checkpoint.auto_insert_metric_name": False})

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # the default: make it atomic
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if isinstance(getattr(trainer.strategy, "_layer_sync", None), TorchSyncBatchNorm) and isinstance(
                trainer.accelerator, CPUAccelerator):  # torch's SyncBatchNorm is GPU-only
            trainer.strategy._layer_sync = DistributedBatchNormSync()
        return trainer

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        if "weights_only" in cfg and cfg.get("weights_only") is None:
            cfg.weights_only = True  # resuming (--ckpt_path) never unpickles code
        if cfg.get("data") is None or cfg.get("model") is None:
            return
        data_cls = import_class(cfg.data.class_path)
        if hasattr(data_cls, "describe"):
            info = data_cls.describe(to_dict(cfg.data.get("init_args")))
            inject(cfg.model, {DATA_TO_MODEL[k]: v for k, v in info.items()}, source=f"data ({cfg.data.class_path})",
                   prefix="model.")


def cli(args: list[str] | None = None, **kwargs: Any) -> SSLCLI:
    """Run the CLI on ``args`` (default: the command line) and return it (``cli.trainer``, ``cli.model``...).
    Given ``args``, the calling script's own command line is kept out of the CLI's sight."""
    os.environ.setdefault("WANDB_SILENT", "true")
    if args is None:  # LightningCLI reads sys.argv itself (passing it as args too makes it warn)
        return SSLCLI(**kwargs)
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        return SSLCLI(args=args, **kwargs)
    finally:
        sys.argv = argv


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
