"""Train for a time budget instead of an epoch count, with every schedule ending at the budget's end."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from lightning_ssl.optim import WarmupCosineLR


class TimeBudget(L.Callback):
    """Fit in ``minutes`` of training, however fast the machine is.

    Lightning's ``max_time`` stops a run wherever it is, with the learning rate half-way down its cosine and the
    EMA momentum short of its end. Here the run is given a number of optimizer steps instead, measured on the
    machine: after ``calibrate_steps`` steps the time per step (validation included, once some has run) fixes
    ``max_steps`` so that training ends at the budget, and the warmup + cosine LR schedule (``WarmupCosineLR``),
    the momentum and temperature schedules (functions of ``trainer.estimated_stepping_batches``) all end there.
    At every epoch end the projection is checked again and the step count corrected when it is off by more than
    ``tolerance`` (a small bend in the schedule, never a cut). The last step asks for a final validation, and a run
    more than ``hard_stop`` x the budget long is stopped. Until calibrated the run has a provisional length whose
    warm-up outlasts the calibration, and the warm-up keeps its length afterwards (unless it would exceed half the
    run), so the LR is continuous; the EMA momentum bends slightly at calibration. A resumed run keeps its step
    count and elapsed time.

    ``minutes=None`` (default) turns it off: the Trainer's ``max_epochs`` / ``max_steps`` rule.

    Args:
        minutes: Training budget in wall-clock minutes, > 0 (8 in ``make demo``); None: off.
        calibrate_steps: Optimizer steps timed before the step count is fixed, >= 2.
        tolerance: Relative error of the projected end, checked at every epoch end, above which the step count
            is corrected (0.03: 3%).
        hard_stop: Stop a run that has lasted this multiple of the budget, > 1 (1.25).
    """

    def __init__(
        self, minutes: float | None = None, calibrate_steps: int = 20, tolerance: float = 0.03, hard_stop: float = 1.25
    ) -> None:
        if minutes is not None and minutes <= 0:
            raise ValueError(f"budget.minutes must be > 0, got {minutes}")
        if calibrate_steps < 2:
            raise ValueError(f"budget.calibrate_steps must be >= 2, got {calibrate_steps}")
        self.minutes, self.calibrate_steps, self.tolerance, self.hard_stop = (
            minutes,
            calibrate_steps,
            tolerance,
            hard_stop,
        )
        self.total_steps: int | None = None
        self.elapsed = 0.0  # seconds of training before this process started (resume)
        self._t0: float | None = None
        self._step0 = 0

    @property
    def seconds(self) -> float:
        return 60.0 * (self.minutes or 0.0)

    def _now(self) -> float:
        return self.elapsed + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.minutes is None:
            return
        self._t0, self._step0 = time.perf_counter(), trainer.global_step
        if self.total_steps is not None:  # resumed: keep the schedule the run started with
            self._set_total(trainer, self.total_steps)
            return
        # until calibrated, a provisional length whose warm-up outlasts the calibration, so the LR is still
        # ramping up (not decaying) when the real length is known
        provisional = (
            int(trainer.estimated_stepping_batches) if math.isfinite(trainer.estimated_stepping_batches) else 0
        )
        for config in trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, WarmupCosineLR) and 0 < config.scheduler.warmup < 1:
                provisional = max(provisional, math.ceil(2 * self.calibrate_steps / config.scheduler.warmup))
        self._set_total(trainer, max(provisional, 2 * self.calibrate_steps), final=False)

    def _set_total(self, trainer: L.Trainer, total: int, final: bool = True) -> None:
        total = max(total, trainer.global_step + 1)
        if final:
            self.total_steps = total
        trainer.fit_loop.max_epochs = -1
        trainer.fit_loop.epoch_loop.max_steps = total
        for config in trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, WarmupCosineLR):
                config.scheduler.set_total_steps(total) if not final else config.scheduler.resize(total)

    def _project(self, trainer: L.Trainer) -> int:
        steps = trainer.global_step - self._step0
        per_step = (time.perf_counter() - self._t0) / max(1, steps)
        return trainer.global_step + int((self.seconds - self._now()) / per_step)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.minutes is None:
            return
        if self.total_steps is None and trainer.global_step - self._step0 >= self.calibrate_steps:
            self._set_total(trainer, self._project(trainer))
            rank_zero_info(
                f"time budget {self.minutes:g} min: {self.total_steps} optimizer steps "
                f"(~{self.total_steps / max(1, trainer.num_training_batches):.1f} epochs) on this machine"
            )
        if self.total_steps is not None and trainer.global_step >= self.total_steps:
            trainer.should_stop = True  # the last step: stop here, with a final validation
            trainer.check_val_every_n_epoch = 1
        if self._now() > self.hard_stop * self.seconds:
            rank_zero_info(f"time budget {self.minutes:g} min overrun by {100 * (self.hard_stop - 1):.0f}%: stopping")
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.minutes is None or self.total_steps is None or trainer.should_stop:
            return
        projected = self._project(trainer)
        if abs(projected - self.total_steps) > self.tolerance * self.total_steps:
            self._set_total(trainer, projected)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.minutes is None:
            return
        epochs = trainer.global_step / max(1, trainer.num_training_batches / trainer.accumulate_grad_batches)
        rank_zero_info(
            f"time budget {self.minutes:g} min: trained {trainer.global_step} optimizer steps "
            f"({epochs:.2f} epochs) in {self._now() / 60:.2f} min"
        )
        self.epochs_done = epochs if math.isfinite(epochs) else None

    def state_dict(self) -> dict[str, Any]:
        return {"total_steps": self.total_steps, "elapsed": self._now()} if self.minutes is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self.total_steps, self.elapsed = state_dict["total_steps"], float(state_dict["elapsed"])
