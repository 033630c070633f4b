"""``lightning-ssl``: a LightningCLI for every method and datamodule of the library (fit/validate/test/predict).

What is added to the plain LightningCLI:

* **Data facts flow to the model.** ``image_size``, ``channels`` (as ``in_channels``) and ``num_classes`` of the
  datamodule are written into every component of the model config whose constructor takes a parameter of that
  name (the backbone, a classifier head, ...), so a YAML names an architecture without repeating the dataset.
  They are written into the config itself, so ``config.yaml`` and the checkpoint's hyperparameters hold them.
  A value set on purpose that contradicts the data (``in_channels: 1`` for RGB data) is an error naming both.
* **Precision for the machine**: ``trainer.precision: auto`` (the default; ``lightning_ssl.trainer.Trainer``)
  resolves to bf16-mixed where the hardware computes bf16 natively and 32-true on other CPUs, and says why; on a
  single CPU process with native bf16 the backbone is timed in both and the faster kept (a small ViT trains 2x
  faster in fp32 there, a CNN 1.3x faster in bf16; ``lightning_ssl.precision.measure_cpu_precision``).
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
import torch
import yaml
from jsonargparse import Namespace
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm

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
from lightning_ssl.callbacks.performance import Performance, is_convolutional
from lightning_ssl.checkpoint import AtomicCheckpointIO, safe_load
from lightning_ssl.config import DATA_TO_MODEL, import_class, inject, to_dict
from lightning_ssl.modules.sync_bn import DistributedBatchNormSync
from lightning_ssl.precision import Chosen, auto_precision, cpu_bf16_support, measure_cpu_precision
from lightning_ssl.trainer import Trainer


class SaveAndLogConfig(SaveConfigCallback):
    """Writes the run's ``config.yaml`` (Lightning's) and hands the whole resolved config - data, views, batch size,
    trainer, seed, not only the model's hyperparameters - to every logger (the W&B run's config)."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})


class SSLCLI(LightningCLI):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("trainer_class", Trainer)
        kwargs.setdefault("save_config_callback", SaveAndLogConfig)
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

    def _measured_precision(self) -> Chosen | None:
        """``precision: auto`` on one CPU with native bf16: bf16-mixed only if this model's backbone trains faster
        in it (``measure_cpu_precision``, a few seconds). Not under multi-process runs, whose ranks must agree."""
        cfg = self._get(self.config_init, "trainer", default={}) or {}
        if str(cfg.get("precision", "auto")).lower() not in ("auto", "none") or os.environ.get("LOCAL_RANK"):
            return None
        accelerator = str(cfg.get("accelerator") or "auto").lower()
        one_process = (
            str(cfg.get("devices", "auto")) in ("auto", "1")
            and int(cfg.get("num_nodes") or 1) == 1
            and str(cfg.get("strategy") or "auto") == "auto"
        )
        if (
            accelerator not in ("auto", "cpu")
            or not one_process
            or torch.cuda.is_available()
            or not cpu_bf16_support()[0]
        ):
            return None
        resume = (self.config_init.get(self.subcommand) if self.subcommand else self.config_init).get("ckpt_path")
        if resume == "last":  # Lightning's "last" with an explicit checkpoint.dirpath: that directory's last.ckpt
            dirpath = getattr(self._get(self.config_init, "checkpoint", default=None), "dirpath", None)
            resume = Path(dirpath) / "last.ckpt" if dirpath and (Path(dirpath) / "last.ckpt").is_file() else None
        if resume:  # a resumed run keeps the precision it was trained in
            saved = safe_load(resume).get("precision") if Path(str(resume)).is_file() else None
            return Chosen(saved, f"as the run being resumed, {Path(resume).name}") if saved else None
        backbone = getattr(self.model, "backbone", None)
        channels, size = getattr(backbone, "in_channels", None), getattr(backbone, "image_size", None)
        if not isinstance(backbone, torch.nn.Module) or not isinstance(channels, int) or not isinstance(size, int):
            return None
        perf = self._get(self.config_init, "performance", default=None)
        setting = getattr(perf, "channels_last", "auto")
        channels_last = is_convolutional(backbone) if setting == "auto" else bool(setting)
        batch = int(getattr(self.datamodule, "batch_size", 128) or 128)
        try:
            return Chosen(*measure_cpu_precision(backbone, channels, size, batch, channels_last=channels_last))
        except Exception as e:  # a backbone that cannot run on a random batch: the hardware's rule, said so
            precision, why = auto_precision(accelerator)
            return Chosen(precision, f"{why}; timing the backbone failed ({type(e).__name__}: {e})")

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        if "precision" not in kwargs and (chosen := self._measured_precision()) is not None:
            kwargs["precision"] = chosen
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # the default: make it atomic
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if isinstance(getattr(trainer.strategy, "_layer_sync", None), TorchSyncBatchNorm) and isinstance(
            trainer.accelerator, CPUAccelerator
        ):  # torch's SyncBatchNorm is GPU-only
            trainer.strategy._layer_sync = DistributedBatchNormSync()
        return trainer

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
        print((self._subcommand_parsers[sub] if sub else parser).dump(cfg, skip_none="skip_null" in flag), end="")
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


PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


def find_config(name: str) -> str:
    """A ``--config`` value: a file that exists is used as it is; otherwise a config shipped with the package, named
    as in the repository (``configs/simclr/fashion_mnist.yaml``) or briefly (``simclr/fashion_mnist``)."""
    if Path(name).exists():
        return name
    short = name.removeprefix("configs/")
    for candidate in (short, f"{short}.yaml"):
        if (PACKAGED_CONFIGS / candidate).is_file():
            return str(PACKAGED_CONFIGS / candidate)
    return name  # jsonargparse names the missing file


def _with_packaged_configs(args: list[str]) -> list[str]:
    out = list(args)
    for i, a in enumerate(out):
        if a == "--config" and i + 1 < len(out):
            out[i + 1] = find_config(out[i + 1])
        elif a.startswith("--config="):
            out[i] = "--config=" + find_config(a.split("=", 1)[1])
    return out


def list_configs() -> list[tuple[str, str]]:
    """(name, first comment line) of every config shipped with the package."""
    rows = []
    for path in sorted(PACKAGED_CONFIGS.glob("*/*.yaml")):
        first = next((line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#")), "")
        rows.append((str(path.relative_to(PACKAGED_CONFIGS).with_suffix("")), first))
    return rows


def cli(args: list[str] | None = None, **kwargs: Any) -> SSLCLI:
    """Run the CLI on ``args`` (default: the command line) and return it (``cli.trainer``, ``cli.model``...).
    Given ``args``, the calling script's own command line is kept out of the CLI's sight. ``--config`` may name a
    config shipped with the package (``--config simclr/fashion_mnist``)."""
    os.environ.setdefault("WANDB_SILENT", "true")
    if args is None:  # LightningCLI reads sys.argv itself (passing it as args too makes it warn)
        sys.argv[1:] = _with_packaged_configs(sys.argv[1:])
        return SSLCLI(**kwargs)
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        return SSLCLI(args=_with_packaged_configs(args), **kwargs)
    finally:
        sys.argv = argv


def main() -> None:
    if sys.argv[1:2] == ["configs"]:  # lightning-ssl configs: what ships with the package
        rows = list_configs()
        width = max(len(n) for n, _ in rows)
        print("\n".join(f"{n:<{width}}  {d}" for n, d in rows))
        print(f"\n{len(rows)} configs in {PACKAGED_CONFIGS}; run one with: lightning-ssl fit --config <name>")
        return
    cli()


if __name__ == "__main__":
    main()
