"""Make every run visible in its logs: metrics at least once per epoch, a validation after the last training step
(whatever the validation interval), and the learning rate."""

from __future__ import annotations

from typing import Literal

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor


def is_final_validation(trainer: L.Trainer) -> bool:
    """True during the validation ``EndOfRun`` asked for after the last training step."""
    return any(isinstance(c, EndOfRun) and c.final_validation for c in getattr(trainer, "callbacks", ()))


def validation_due(trainer: L.Trainer, every_n_epochs: int) -> bool:
    """Whether a callback that acts every ``every_n_epochs`` validations acts in this one: never in the sanity
    check or with ``every_n_epochs <= 0``; always in the final validation after the last training step."""
    return (
        every_n_epochs > 0
        and not trainer.sanity_checking
        and ((trainer.current_epoch + 1) % every_n_epochs == 0 or is_final_validation(trainer))
    )


class EndOfRun(L.Callback):
    """A short run still records something, and every run reports its final model:

    * the training metrics are logged at least once per epoch (``log_every_n_steps`` is lowered to the number of
      batches of an epoch when it is larger: a 12-batch epoch with the default 50 would log nothing);
    * a run whose last epoch is not a validation epoch (``check_val_every_n_epoch: 5`` with 7 epochs, a 1-epoch
      run, ``max_steps`` or a time budget stopping mid-epoch) still ends with one validation, so the kNN monitor,
      the probe and the picture callbacks report the final model.

    ``enabled: false`` turns both off.

    Args:
        enabled: Turn both behaviours on (True) or off.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.final_validation = False  # True during the validation asked for after the last training step

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        batches = trainer.num_training_batches
        every = getattr(trainer, "log_every_n_steps", None)  # set by Lightning's logger connector
        if self.enabled and isinstance(batches, int) and isinstance(every, int) and 0 < batches < every:
            trainer.log_every_n_steps = batches  # type: ignore[attr-defined]  # Trainer sets it without declaring it

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if not self.enabled or trainer.limit_val_batches == 0 or trainer.sanity_checking:
            return
        loop = trainer.fit_loop
        last_epoch = (
            loop.max_epochs is not None and loop.max_epochs > 0 and trainer.current_epoch >= loop.max_epochs - 1
        )
        end_of_epoch = loop.epoch_loop.batch_progress.is_last_batch
        last_step = trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        if (last_epoch and end_of_epoch) or last_step or trainer.should_stop:
            if last_step and not end_of_epoch:
                trainer.should_stop = True  # Lightning validates mid-epoch only when asked to stop
            trainer.check_val_every_n_epoch = 1
            self.final_validation = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.final_validation = False


class LearningRateLogger(LearningRateMonitor):
    """Lightning's ``LearningRateMonitor`` (``lr-<optimizer>`` per step, and momentum where the optimizer has one)
    that stays out of the way of runs without a logger instead of refusing them.

    Args:
        logging_interval: ``"step"``, ``"epoch"`` or None (at the scheduler's own interval).
        log_momentum: Also log the optimizer's momentum / beta1.
        log_weight_decay: Also log the weight decay.
    """

    def __init__(
        self,
        logging_interval: Literal["step", "epoch"] | None = "step",
        log_momentum: bool = False,
        log_weight_decay: bool = False,
    ) -> None:
        super().__init__(
            logging_interval=logging_interval, log_momentum=log_momentum, log_weight_decay=log_weight_decay
        )

    def on_train_start(self, trainer: L.Trainer, *args, **kwargs) -> None:
        self._off = not trainer.loggers
        if not self._off:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer, *args, **kwargs) -> None:
        if not getattr(self, "_off", True):
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer, *args, **kwargs) -> None:
        if not getattr(self, "_off", True):
            super().on_train_epoch_start(trainer, *args, **kwargs)
