"""``lightning-ssl``: a LightningCLI for every method and datamodule of the library (fit/validate/test/predict).

What is added to the plain LightningCLI:

* **Data facts flow to the model.** ``image_size``, ``channels`` (as ``in_channels``) and ``num_classes`` of the
  datamodule are written into every component of the model config whose constructor takes a parameter of that
  name (the backbone, a classifier head, ...), so a YAML names an architecture without repeating the dataset.
  They are written into the config itself, so ``config.yaml`` and the checkpoint's hyperparameters hold them.
  A value set on purpose that contradicts the data (``in_channels: 1`` for RGB data) is an error naming both.
* **Precision for the machine**: ``trainer.precision: auto`` (the default; ``lightning_ssl.trainer.Trainer``, the
  same Trainer Python users build) resolves to bf16-mixed where the hardware computes bf16 natively and 32-true on
  other CPUs, and says why; on a single CPU process with native bf16 the backbone is timed in both when fit starts
  and bf16 kept only when >= 10% faster (``lightning_ssl.precision.measure_cpu_precision``).
* **A time budget**: ``budget.minutes`` trains for that long, with the schedules ending at the budget's end.
* **Optimizer recipe settings for every method**, at the top level: ``lr_scaling.base_batch_size`` (the linear
  scaling rule), ``param_groups`` (biases and norms: a learning rate of their own, or decayed like the weights) and
  ``weight_decay_schedule.end`` (cosine weight decay), each off by default.
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
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from jsonargparse import Namespace
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm
from lightning.pytorch.strategies import ParallelStrategy

import lightning_ssl.data
import lightning_ssl.eval.finetune
import lightning_ssl.loggers
import lightning_ssl.methods
import lightning_ssl.modules.pretrained  # noqa: F401
from lightning_ssl import runs
from lightning_ssl.callbacks import (
    CollapseMonitor,
    EmbeddingPlot,
    EndOfRun,
    KNNMonitor,
    LearningRateLogger,
    LinearLRScaling,
    NonFiniteGuard,
    OnlineLinearProbe,
    ParamGroups,
    ViewGrid,
    WeightDecaySchedule,
)
from lightning_ssl.callbacks.budget import TimeBudget
from lightning_ssl.callbacks.performance import Performance
from lightning_ssl.checkpoint import AtomicCheckpointIO
from lightning_ssl.config import DATA_TO_MODEL, import_class, inject, to_dict
from lightning_ssl.console import PACKAGED_CONFIGS as PACKAGED_CONFIGS  # re-exported: configs are listed there
from lightning_ssl.console import find_config as find_config
from lightning_ssl.console import list_configs as list_configs
from lightning_ssl.console import with_packaged_configs
from lightning_ssl.modules.sync_bn import DistributedBatchNormSync
from lightning_ssl.trainer import Trainer


class SaveAndLogConfig(SaveConfigCallback):
    """Writes the run's ``config.yaml`` (Lightning's) and hands the whole resolved config - data, views, batch size,
    trainer, seed, not only the model's hyperparameters - to every logger (the W&B run's config)."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        config = yaml.safe_load(self.parser.dump(self.config, skip_unset=False))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})


class SSLCLI(LightningCLI):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("trainer_class", Trainer)
        kwargs.setdefault("save_config_callback", SaveAndLogConfig)
        kwargs.setdefault("parser_kwargs", {}).setdefault("exit_on_error", False)  # errors raise: reported short
        super().__init__(L.LightningModule, L.LightningDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(KNNMonitor, "knn")
        parser.add_lightning_class_args(OnlineLinearProbe, "probe")
        parser.add_lightning_class_args(CollapseMonitor, "collapse")
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
        parser.add_lightning_class_args(Performance, "performance")
        parser.add_lightning_class_args(TimeBudget, "budget")
        parser.add_lightning_class_args(LinearLRScaling, "lr_scaling")
        parser.add_lightning_class_args(ParamGroups, "param_groups")
        parser.add_lightning_class_args(WeightDecaySchedule, "weight_decay_schedule")
        parser.add_lightning_class_args(ViewGrid, "views")
        parser.add_lightning_class_args(EmbeddingPlot, "embeddings")
        parser.add_lightning_class_args(LearningRateLogger, "lr_monitor")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(EndOfRun, "end_of_run")  # last: sees the others' should_stop
        parser.set_defaults(
            {
                "checkpoint.save_last": True,
                "checkpoint.filename": "epoch{epoch:03d}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )

    def _parse_ckpt_path(self) -> None:
        """Lightning rebuilds the model from a checkpoint file's hyperparameters: say which values given here that
        replaces, instead of dropping them silently."""
        sub = self.config.get("subcommand")
        before = to_dict(self.config[sub].get("model")) if sub else None
        super()._parse_ckpt_path()
        if before is not None:
            after = to_dict(self.config[sub].get("model"))
            changed = runs.diff(before, after, there="in the checkpoint")
            if changed and self.config[sub].get("ckpt_path"):
                warnings.warn(
                    f"--ckpt_path {self.config[sub].ckpt_path}: the model is rebuilt from the checkpoint's "
                    f"hyperparameters, which replace these values: {'; '.join(changed[:4])}",
                    stacklevel=2,
                )

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # the default: make it atomic
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        strategy = trainer.strategy
        if (
            isinstance(strategy, ParallelStrategy)  # the strategies with a layer sync
            and isinstance(strategy._layer_sync, TorchSyncBatchNorm)
            and isinstance(trainer.accelerator, CPUAccelerator)
        ):  # torch's SyncBatchNorm is GPU-only
            strategy._layer_sync = DistributedBatchNormSync()
        return trainer

    def after_fit(self) -> None:
        """Say where the run is: its folder, best and last checkpoints and the evaluation to run next, from the run's
        own ``config.yaml`` (its data exactly as trained). Computed on every rank without collectives, printed by
        rank 0."""
        labelled = getattr(self.datamodule, "num_classes", None) is not None and hasattr(self.model, "embed")
        saved = runs.log_dir(self.trainer) / "config.yaml"
        text = runs.fit_summary(self.trainer, str(saved) if labelled and saved.is_file() else None)
        if self.trainer.is_global_zero:
            print(text)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """``--print_config`` prints the config that will run: with the data's image size, channels and classes
        already written into the model (jsonargparse would print it before they are)."""
        argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, (dict, Namespace)) else []
        flag = next((a for a in argv if a == "--print_config" or a.startswith("--print_config=")), None)
        if flag is None:
            return super().parse_arguments(parser, args)
        self.config = parser.parse_args([a for a in argv if a != flag])
        sub = self.config.get("subcommand")
        cfg = self.config[sub] if sub else self.config
        self._fill_in_data_facts(cfg)
        print((self._subcommand_parsers[sub] if sub else parser).dump(cfg, skip_unset="skip_null" in flag), end="")
        sys.exit(0)

    def _fill_in_data_facts(self, cfg: Namespace) -> None:
        if cfg.get("data") is None or cfg.get("model") is None:
            return
        data_cls = import_class(cfg.data.class_path)
        if hasattr(data_cls, "describe"):
            info = data_cls.describe(to_dict(cfg.data.get("init_args")))
            inject(
                cfg.model,
                {DATA_TO_MODEL[k]: v for k, v in info.items()},
                source=f"data ({cfg.data.class_path})",
                prefix="model.",
            )

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        if "weights_only" in cfg and cfg.get("weights_only") is None:
            cfg.weights_only = True  # resuming (--ckpt_path) never unpickles code
        for key in ("optimizer", "lr_scheduler"):
            if cfg.get(key) is not None:
                raise ValueError(
                    f"--{key} at the top level would replace the method's whole optimizer setup (its warm-up + cosine "
                    f"schedule and the no-weight-decay groups for biases and norms). Set model.init_args."
                    f"{'optimizer' if key == 'optimizer' else 'scheduler'} instead, e.g. "
                    f"--model.init_args.optimizer.init_args.lr 0.001"
                )
        if cfg.get("data") is None or cfg.get("model") is None:
            return
        self._fill_in_data_facts(cfg)
        if self.subcommand and cfg.get("checkpoint") is not None and cfg.checkpoint.get("dirpath") is None:
            self._place_run(cfg)

    def _place_run(self, cfg: Namespace) -> None:
        """Give a fit its own run directory (``lightning_ssl.runs``), resolve ``--ckpt_path last`` to the newest
        run of the same model config, and point checkpoints and loggers into the run's directory."""
        root = Path(
            cfg.trainer.get("default_root_dir") or Path("outputs") / cfg.model.class_path.rpartition(".")[2].lower()
        )
        resume, run_dir = cfg.get("ckpt_path"), None
        if resume == "last":
            run_dir, diff = runs.find_resumable(root, to_dict(cfg.model))
            if run_dir is None and diff:
                raise ValueError(
                    f"--ckpt_path last: no run under {root} was trained with this model config "
                    f"(the newest one differs: {diff[0]}). Resume that run with its own config, or give "
                    f"its checkpoint file as --ckpt_path."
                )
            if run_dir is None:
                warnings.warn(f"--ckpt_path last: nothing to resume under {root}; starting a new run", stacklevel=2)
            cfg.ckpt_path = str(runs.last_checkpoint(run_dir)) if run_dir is not None else None
        elif resume and Path(resume).parent.name == "checkpoints":  # a run's own checkpoint: continue in that run
            run_dir = Path(resume).parent.parent
        if self.subcommand != "fit":
            return
        run_dir = run_dir or runs.new_run_dir(root)
        cfg.trainer.default_root_dir = str(run_dir)
        cfg.checkpoint.dirpath = str(run_dir / "checkpoints")
        name = f"{root.name}/{run_dir.name}"
        loggers = cfg.trainer.get("logger")
        if loggers is None or loggers is True:  # Lightning's default logger, but in the run's own directory
            loggers = Namespace(class_path="lightning_ssl.loggers.CSVLogger", init_args=Namespace(save_dir="."))
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            init = logger.get("init_args") if isinstance(logger, Namespace) else None
            if init is None:
                continue
            if "save_dir" in init:
                init.save_dir = str(run_dir)
            if logger.class_path.rpartition(".")[2] in ("CSVLogger", "TensorBoardLogger"):
                init.name, init.version = "", ""  # files straight in the run directory, not in a sub-version
            elif "name" in init and init.get("name") is None:  # W&B: the run is named after the config and version
                init.name = name
                if "tags" in init and not init.get("tags"):
                    init.tags = [cfg.model.class_path.rpartition(".")[2], cfg.data.class_path.rpartition(".")[2]]
        cfg.trainer.logger = loggers


def cli(args: list[str] | None = None, **kwargs: Any) -> SSLCLI:
    """Run the CLI on ``args`` (default: the command line) and return it (``cli.trainer``, ``cli.model``...).
    Given ``args``, the calling script's own command line is kept out of the CLI's sight. ``--config`` may name a
    config shipped with the package (``--config simclr/fashion_mnist``)."""
    os.environ.setdefault("WANDB_SILENT", "true")
    if args is None:  # LightningCLI reads sys.argv itself (passing it as args too makes it warn)
        sys.argv[1:] = with_packaged_configs(sys.argv[1:])
        return SSLCLI(**kwargs)
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        return SSLCLI(args=with_packaged_configs(args), **kwargs)
    finally:
        sys.argv = argv


def main() -> int:
    """The ``lightning-ssl`` console script (``lightning_ssl.console.main``: quick help, ``configs``, short errors)."""
    from lightning_ssl.console import main as console_main

    return console_main()


if __name__ == "__main__":
    sys.exit(main())
