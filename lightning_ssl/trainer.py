"""Lightning's ``Trainer`` with ``precision="auto"`` as its default: the precision is chosen for the hardware the
run is on (``lightning_ssl.precision``), the same way from Python and from ``lightning-ssl fit``, and said in one
line with its reason. Any explicit precision (``--trainer.precision 32-true``, ``Trainer(precision="bf16-mixed")``)
is used as given. ``fit`` also keeps torch's threads plus the loader workers within the CPUs the process may use."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from lightning.fabric.loggers.tensorboard import _TENSORBOARD_AVAILABLE, _TENSORBOARDX_AVAILABLE
from lightning.pytorch.accelerators import CPUAccelerator

from lightning_ssl.callbacks.budget import TimeBudget
from lightning_ssl.callbacks.performance import Performance, is_convolutional
from lightning_ssl.callbacks.summary import ModelSummary
from lightning_ssl.checkpoint import safe_load
from lightning_ssl.loggers import CSVLogger
from lightning_ssl.precision import (
    AUTO,
    Chosen,
    auto_precision,
    cpu_bf16_support,
    limit_threads,
    measure_cpu_precision,
    resolve_precision,
    usable_cpus,
)

log = logging.getLogger("lightning.pytorch")


class _DropAdvert(logging.Filter):
    """Lightning's start-of-fit tip to install its cloud logger: not a message about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip: For seamless cloud logging")


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdvert())
# Lightning's own pytree helper calls a torch API torch deprecates (lightning/pytorch/utilities/_pytree.py): nothing a
# user of this package can change, printed on every fit
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
# frozen parts (BEiT's tokenizer, a VQ-KD teacher, the Gram teacher) stay in eval mode on purpose:
# each method's train() keeps them there, which Lightning's start-of-training check reads as a mistake
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


class Trainer(L.Trainer):
    """``lightning.Trainer`` whose ``precision`` defaults to ``"auto"``.

    ``auto`` resolves to bf16-mixed on CUDA devices with bf16 (16-mixed on older ones), to fp32 on CPUs without
    native bf16, and, for one process on a CPU with native bf16, to what ``fit`` measures as faster for the model's
    backbone (``lightning_ssl.precision.measure_cpu_precision``: bf16-mixed only when at least 10% faster; a resumed
    run keeps the precision its checkpoint was trained in). The choice and its figures are logged in one line.

    Args:
        *args: passed to ``lightning.Trainer``.
        precision: ``"auto"`` (default, or None) or any Lightning precision, used as given.
        **kwargs: passed to ``lightning.Trainer``.
    """

    def __init__(self, *args: Any, precision: str | int | None = AUTO, **kwargs: Any) -> None:
        auto = not isinstance(precision, Chosen) and (precision is None or str(precision).lower() == AUTO)
        chosen, why = resolve_precision(precision, kwargs.get("accelerator", "auto"))
        as_set = chosen == precision and not isinstance(precision, Chosen)
        self.precision_reason = f"precision {chosen} (as set)" if as_set else f"precision {chosen} ({why})"
        callbacks = kwargs.get("callbacks")
        callbacks = [callbacks] if isinstance(callbacks, L.Callback) else list(callbacks or [])
        unlimited = kwargs.get("max_epochs") is None and kwargs.get("max_steps") in (None, -1)
        if (
            unlimited
            and kwargs.get("max_time") is None
            and any(isinstance(c, TimeBudget) and c.minutes for c in callbacks)
        ):
            kwargs["max_epochs"] = 1000  # the budget plans the length: Lightning's default, without its warning
        if kwargs.get("logger") in (None, True) and not (_TENSORBOARD_AVAILABLE or _TENSORBOARDX_AVAILABLE):
            # Lightning's default logger is then a CSVLogger, with a warning that TensorBoard is not installed
            kwargs["logger"] = CSVLogger(save_dir=kwargs.get("default_root_dir") or os.getcwd())
        if kwargs.get("enable_model_summary") is not False and not any(
            isinstance(c, L.pytorch.callbacks.ModelSummary) for c in callbacks
        ):  # Lightning's default prints a column of 0 FLOPs (and warns under bf16-mixed): ours, in its place
            kwargs["callbacks"] = [*callbacks, ModelSummary()]
            kwargs["enable_model_summary"] = False  # Lightning adds no default of its own (and does not say so)
        super().__init__(*args, precision=cast(Any, chosen), **kwargs)  # "auto" is resolved: a Lightning value
        # measured when fit starts: only one process can time alone (ranks would have to agree)
        self.measure_precision = (
            auto
            and self.world_size == 1
            and not os.environ.get("LOCAL_RANK")
            and isinstance(self.accelerator, CPUAccelerator)
            and cpu_bf16_support()[0]
        )
        if self.is_global_zero and not self.measure_precision:
            log.info(f"lightning-ssl: {self.precision_reason}")

    def fit(  # type: ignore[override]  # **kwargs forwards weights_only where Lightning has it (2.6)
        self,
        model: L.LightningModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: L.LightningDataModule | None = None,
        ckpt_path: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        data = datamodule if datamodule is not None else train_dataloaders
        self._limit_threads(data)
        if self.measure_precision:
            self.measure_precision = False
            chosen = self.fit_precision(model, data, ckpt_path)
            self.precision_reason = f"precision {chosen} ({chosen.why})"
            if chosen != self.precision:
                self._set_precision(chosen)
            log.info(f"lightning-ssl: {self.precision_reason}")
        return super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, **kwargs)

    def fit_precision(self, model: L.LightningModule, data: Any = None, ckpt_path: str | Path | None = None) -> Chosen:
        """What ``precision="auto"`` resolves to for fitting ``model`` on ``data`` (a datamodule or dataloader) on
        this one-process CPU run with native bf16: the precision of the run resumed from ``ckpt_path``, else the
        faster for the backbone as measured (``measure_cpu_precision``), else the hardware rule, said why."""
        resume = ckpt_path
        if resume == "last" and self.checkpoint_callback is not None:
            dirpath = getattr(self.checkpoint_callback, "dirpath", None)
            resume = Path(dirpath) / "last.ckpt" if dirpath else None
        if resume and Path(resume).is_file():  # a resumed run keeps the precision it was trained in
            saved = safe_load(resume).get("precision")
            if saved:
                return Chosen(saved, f"as the run being resumed, {Path(resume).name}")
        hardware, why = auto_precision("cpu")
        backbone = getattr(model, "backbone", None)
        channels, size = getattr(backbone, "in_channels", None), getattr(backbone, "image_size", None)
        if not isinstance(backbone, torch.nn.Module) or not isinstance(channels, int) or not isinstance(size, int):
            return Chosen(hardware, f"{why}; the model has no image backbone to time")
        perf = next((c for c in getattr(self, "callbacks", []) if isinstance(c, Performance)), None)
        setting = perf.channels_last if perf is not None else False
        channels_last = is_convolutional(backbone) if setting == "auto" else bool(setting)
        batch = getattr(data, "batch_size", None) or 128
        try:
            return Chosen(*measure_cpu_precision(backbone, channels, size, int(batch), channels_last=channels_last))
        except Exception as e:  # a backbone that cannot run on a random batch: the hardware's rule, said so
            return Chosen(hardware, f"{why}; timing the backbone failed ({type(e).__name__}: {e})")

    def _set_precision(self, precision: str) -> None:
        """Replace the precision plugin chosen at construction (before fit sets the strategy up)."""
        connector = self._accelerator_connector
        connector._precision_flag = cast(Any, precision)  # one of Lightning's precision strings
        connector.precision_plugin = connector._check_and_init_precision()
        self.strategy.precision_plugin = connector.precision_plugin

    def _limit_threads(self, data: Any) -> None:
        workers = int(getattr(data, "num_workers", 0) or 0)
        processes = self.num_devices if isinstance(self.accelerator, CPUAccelerator) else 1
        if workers and hasattr(data, "num_workers"):  # leave at least one CPU to the training process itself
            cpus = max(1, usable_cpus()[0] // processes)
            if workers > cpus - 1:
                log.info(f"lightning-ssl: {workers} loader workers on {cpus} usable CPUs: using {cpus - 1}")
                data.num_workers = workers = cpus - 1
        line = limit_threads(workers, processes)
        if self.is_global_zero:
            log.info(f"lightning-ssl: {line}")
