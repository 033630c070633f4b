"""Train for a time budget instead of an epoch count, with every schedule ending at the budget's end."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from lightning_ssl.optim import WarmupCosineLR


class TimeBudget(L.Callback):
    """Fit in ``minutes`` of training, however fast the machine is and however long an epoch is.

    Lightning's ``max_time`` stops a run wherever it is, with the learning rate half-way down its cosine and the
    EMA momentum short of its end. Here the run is given a number of optimizer steps instead, planned from the
    machine's measured speed, and the warmup + cosine LR schedule (``WarmupCosineLR``), the momentum and
    temperature schedules (functions of ``trainer.estimated_stepping_batches``) all end at that step.

    The plan:

    * **Rate**: seconds per optimizer step over the recent steps (the last quarter of the steps so far, at least
      ``calibrate_steps - startup_steps``), leaving out the first ``startup_steps`` of each process (kernel
      selection, loader start-up, compilation) and the time spent validating, so a slow start or a competing
      process that has ended stops counting.
    * **Validation**: the time of the last validation (or, before any, the sanity check's per-batch time times
      the validation's batches) is set aside for each periodic validation still to come and for the final one
      after the last step, so the run *ends*, final validation included, at the budget.
    * **Corrected continuously**: first after ``calibrate_steps`` steps, then every ``replan_every`` steps, at
      epoch ends and after each validation; a change smaller than ``tolerance`` of the steps left is not applied,
      so the schedules bend rarely and slightly, never jump. A run whose single epoch outlasts the budget is
      planned and corrected like any other.

    Until calibrated the run has a provisional length whose warm-up outlasts the calibration, and the warm-up
    keeps its length afterwards (unless it would exceed half the run), so the LR is continuous. The Trainer's
    ``max_epochs`` follows the plan (the progress bar shows the planned epoch count) and ``max_steps`` is the
    planned step count. The last step asks for a final validation; a run more than ``hard_stop`` x the budget long
    is stopped. A resumed run keeps its plan and elapsed time, and corrects the plan once it has timed its own
    steps.

    Args:
        minutes: the budget in minutes of training (> 0), counted from the first training step to the end of the
            final validation; ``None`` (default) turns the budget off: the Trainer's ``max_epochs`` /
            ``max_steps`` rule.
        calibrate_steps: optimizer steps timed before the first plan (>= ``startup_steps + 2``).
        startup_steps: the first optimizer steps of each process left out of the rate (>= 1; default: a quarter
            of ``calibrate_steps``, at most 5).
        replan_every: optimizer steps between plan corrections (>= 1).
        tolerance: a correction is applied when it changes the plan by more than this fraction of the steps left
            (0 to 1; 0.02 keeps the end within ~2% of the time left at the last correction).
        hard_stop: stop a run that reaches this multiple of the budget (> 1), whatever the plan says.
    """

    def __init__(
        self,
        minutes: float | None = None,
        calibrate_steps: int = 20,
        startup_steps: int | None = None,
        replan_every: int = 10,
        tolerance: float = 0.02,
        hard_stop: float = 1.25,
    ) -> None:
        if minutes is not None and minutes <= 0:
            raise ValueError(f"budget.minutes must be > 0, got {minutes}")
        if startup_steps is None:
            startup_steps = max(1, min(5, calibrate_steps // 4))
        if startup_steps < 1:
            raise ValueError(f"budget.startup_steps must be >= 1, got {startup_steps}")
        if calibrate_steps < startup_steps + 2:
            raise ValueError(
                f"budget.calibrate_steps must be >= budget.startup_steps + 2 = {startup_steps + 2}, got "
                f"{calibrate_steps}"
            )
        if replan_every < 1 or not 0 <= tolerance < 1 or hard_stop <= 1:
            raise ValueError(
                f"budget: replan_every must be >= 1, tolerance in [0, 1), hard_stop > 1; got {replan_every}, "
                f"{tolerance}, {hard_stop}"
            )
        self.minutes, self.calibrate_steps, self.startup_steps = minutes, calibrate_steps, startup_steps
        self.replan_every, self.tolerance, self.hard_stop = replan_every, tolerance, hard_stop
        self.total_steps: int | None = None  # the plan (None until calibrated)
        self.first_plan: int | None = None
        self.plans: list[tuple[int, int]] = []  # (global step, planned total) at each applied correction
        self.elapsed = 0.0  # seconds of training before this process started (resume)
        self.val_seconds: float | None = None  # duration of the last validation
        self.seconds_used: float | None = None  # the budget's own account of the run, at its end
        self.epochs_done: float | None = None
        self._t0: float | None = None
        self._step0 = 0
        self._marks: list[tuple[int, float]] = []  # (global step, training seconds of this process)
        self._val_total = 0.0  # seconds validating in this process
        self._val_start: float | None = None
        self._sanity_per_batch: float | None = None
        self._validation_planned: float | None = None  # the validation time the last plan assumed

    @property
    def seconds(self) -> float:
        return 60.0 * (self.minutes or 0.0)

    def _now(self) -> float:
        """Seconds of the budget used so far (this process and, resumed, the ones before)."""
        return self.elapsed + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)

    # --- measuring -------------------------------------------------------------------------------------------

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_sanity_check_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        batches = sum(trainer.num_sanity_val_batches)
        if self._val_start is not None and batches > 0:
            self._sanity_per_batch = (time.perf_counter() - self._val_start) / batches
        self._val_start = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and self._t0 is not None:
            self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._val_start is None:
            return
        self.val_seconds = time.perf_counter() - self._val_start
        self._val_total += self.val_seconds
        self._val_start = None
        if self.total_steps is not None and not trainer.should_stop:
            self._replan(trainer)

    def _rate(self) -> float:
        """Seconds per optimizer step over the recent steps (start-up steps and validation left out)."""
        window = max(self.calibrate_steps - self.startup_steps, (len(self._marks) - 1) // 4)
        (s1, t1), (s0, t0) = self._marks[-1], self._marks[max(0, len(self._marks) - 1 - window)]
        return (t1 - t0) / max(1, s1 - s0)

    def _validation_estimate(self, trainer: L.Trainer) -> float:
        if self.val_seconds is not None:
            return self.val_seconds
        if self._sanity_per_batch is not None:
            return self._sanity_per_batch * sum(trainer.num_val_batches)
        return 0.0  # nothing measured yet: corrected after the first validation

    @staticmethod
    def _validations_between(trainer: L.Trainer, after: int, before: int) -> int:
        """Periodic validations Lightning will run after optimizer step ``after`` and before step ``before``."""
        batches = trainer.num_training_batches
        if not sum(trainer.num_val_batches) or not math.isfinite(batches) or batches <= 0 or before <= after:
            return 0
        per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
        check_batch = trainer.val_check_batch or batches
        every_epochs = trainer.check_val_every_n_epoch
        if every_epochs is None:  # val_check_interval counts batches across epochs
            interval = max(1, round(check_batch / trainer.accumulate_grad_batches))
            return (before - 1) // interval - after // interval
        checks = max(1, int(batches // check_batch)) if math.isfinite(check_batch) and check_batch > 0 else 1
        period = every_epochs * per_epoch  # one validation epoch per period, ``checks`` validations in it
        return checks * ((before - 1) // period - after // period)

    # --- planning ----------------------------------------------------------------------------------------------

    def _plan(self, trainer: L.Trainer) -> int:
        """The step count that ends the run, final validation included, at the budget."""
        step, rate = trainer.global_step, max(self._rate(), 1e-6)
        validation = self._validation_planned = self._validation_estimate(trainer)
        left = self.seconds - self._now() - validation  # the final validation comes after the last step
        total = step + max(0, int(left / rate))
        for _ in range(5):  # the periodic validations depend on the length: a few fixed-point rounds
            periodic = self._validations_between(trainer, step, total)
            new = step + max(0, int((left - periodic * validation) / rate))
            if new == total:
                break
            total = new
        return total

    def _set_total(self, trainer: L.Trainer, total: int, final: bool = True) -> None:
        total = max(total, trainer.global_step)
        if final:
            self.total_steps = total
            self.plans.append((trainer.global_step, total))
        loop = trainer.fit_loop
        loop.epoch_loop.max_steps = total
        batches = trainer.num_training_batches
        if math.isfinite(batches) and batches > 0:  # the planned epochs: the progress bar's "Epoch 3/7"
            per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
            loop.max_epochs = max(math.ceil(total / per_epoch), trainer.current_epoch + 1)
        else:
            loop.max_epochs = -1
        for config in trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, WarmupCosineLR):
                config.scheduler.set_total_steps(total) if not final else config.scheduler.resize(total)

    def _replan(self, trainer: L.Trainer) -> None:
        if len(self._marks) < 2 or self.total_steps is None:
            return
        total = self._plan(trainer)
        left = max(1, self.total_steps - trainer.global_step)
        if abs(total - self.total_steps) > max(1.0, self.tolerance * left) or total <= trainer.global_step:
            self._set_total(trainer, total)

    # --- the run -----------------------------------------------------------------------------------------------

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.minutes is None:
            return
        self._t0, self._step0, self._marks, self._val_total = time.perf_counter(), trainer.global_step, [], 0.0
        if self.total_steps is not None:  # resumed: keep the plan the run started with until re-timed
            self.first_plan = self.total_steps
            self._set_total(trainer, self.total_steps, final=False)
            return
        # until calibrated, a provisional length whose warm-up outlasts the calibration (the LR is still ramping up
        # when the real length is known, and the ramp then goes on to the real warm-up's end)
        provisional = 2 * self.calibrate_steps
        for config in trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, WarmupCosineLR) and 0 < config.scheduler.warmup < 1:
                provisional = max(provisional, math.ceil(2 * self.calibrate_steps / config.scheduler.warmup))
        self._set_total(trainer, provisional, final=False)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.minutes is None or self._t0 is None:
            return
        done = trainer.global_step - self._step0
        if done >= self.startup_steps:
            self._marks.append((trainer.global_step, time.perf_counter() - self._t0 - self._val_total))
        if done == self.calibrate_steps:  # the first plan of this process (a resumed run: its first correction)
            self._set_total(trainer, self._plan(trainer))
            if self.first_plan is None:
                self.first_plan = self.total_steps
                self._say_plan(trainer)
        elif done > self.calibrate_steps and (done - self.calibrate_steps) % self.replan_every == 0:
            self._replan(trainer)
        if self.total_steps is not None and trainer.global_step >= self.total_steps:
            trainer.should_stop = True  # the last step: stop here, with a final validation
            trainer.check_val_every_n_epoch = 1
        if self._now() > self.hard_stop * self.seconds:
            rank_zero_info(f"time budget {self.minutes:g} min overrun by {100 * (self.hard_stop - 1):.0f}%: stopping")
            trainer.should_stop = True

    def _say_plan(self, trainer: L.Trainer) -> None:
        if self.total_steps is None:
            return
        batches = trainer.num_training_batches
        epochs = (
            f"~{self.total_steps * trainer.accumulate_grad_batches / batches:.1f} epochs"
            if math.isfinite(batches) and batches > 0
            else "an endless dataset"
        )
        rank_zero_info(
            f"time budget {self.minutes:g} min: planned {self.total_steps} optimizer steps ({epochs}) at "
            f"{1000 * self._rate():.0f} ms/step on this machine; the plan is corrected every {self.replan_every} "
            f"steps"
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.minutes is not None and self.total_steps is not None and not trainer.should_stop:
            self._replan(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.minutes is None:
            return
        self.seconds_used = self._now()
        batches = trainer.num_training_batches
        epochs = trainer.global_step * trainer.accumulate_grad_batches / batches if batches else math.nan
        self.epochs_done = epochs if math.isfinite(epochs) else None
        where = f" ({epochs:.2f} epochs)" if self.epochs_done is not None else ""
        final = ""
        if self.val_seconds is not None and self._validation_planned is not None:
            final = f"; the final validation took {self.val_seconds:.0f} s, planned {self._validation_planned:.0f} s"
        rank_zero_info(
            f"time budget {self.minutes:g} min: trained {trainer.global_step} optimizer steps{where} in "
            f"{self.seconds_used / 60:.2f} min (first plan {self.first_plan} steps, {len(self.plans)} corrections"
            f"{final})"
        )

    def state_dict(self) -> dict[str, Any]:
        if self.minutes is None:
            return {}
        return {"total_steps": self.total_steps, "elapsed": self._now(), "val_seconds": self.val_seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self.total_steps, self.elapsed = state_dict["total_steps"], float(state_dict["elapsed"])
            self.val_seconds = state_dict.get("val_seconds")
