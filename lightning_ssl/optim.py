"""Optimizer helpers: parameter groups without weight decay on biases/norms (with a learning rate of their own if
wanted), a warmup + cosine LR schedule and a cosine weight-decay schedule, both driven by the optimizer step count.
LARS comes from timm (``timm.optim.Lars``: ``trust_coeff`` is LARS's eta, ``trust_clip`` solo-learn's ``clip_lr``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from lightning_ssl.modules.momentum import cosine_momentum


def param_groups(
    modules: Iterable[nn.Module] | nn.Module, weight_decay_1d: bool = False, no_decay_lr: float | None = None
) -> list[dict[str, Any]]:
    """Split parameters into a decayed group (weights, ndim >= 2) and a group with ``weight_decay=0`` (biases and
    normalization parameters), as in SimCLR/BYOL/MAE. Frozen parameters are left out.

    Args:
        modules: the module(s) whose trainable parameters are grouped (a parameter shared by two is taken once).
        weight_decay_1d: put biases and norm parameters in the decayed group too.
        no_decay_lr: a learning rate of the no-decay group's own (Barlow Twins: 0.0048 against the weights' 0.2,
            both x batch/256); None: the optimizer's. LR schedules and ``lr_scaling`` act on it as on the other.

    Returns:
        ``[{"params", "decayed": True, "always_adapt": True}, {"params", "weight_decay": 0.0, "decayed": False,
        "always_adapt": False}]`` (the second only when it has parameters). ``decayed`` marks the groups that
        weight-decay schedules set; ``always_adapt`` is read by ``timm.optim.Lars`` (other optimizers ignore it):
        LARS's trust ratio scales the weights' update whatever their weight decay (also while it is 0) and never
        the biases' and norms' (excluded from adaptation and decay, as SimCLR, BYOL, Barlow Twins and solo-learn's
        ``exclude_bias_n_norm`` do).
    """
    if isinstance(modules, nn.Module):
        modules = [modules]
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for m in modules:
        for p in m.parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (decay if p.ndim >= 2 or weight_decay_1d else no_decay).append(p)
    groups: list[dict[str, Any]] = [{"params": decay, "decayed": True, "always_adapt": True}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "decayed": False, "always_adapt": False})
        if no_decay_lr is not None:
            groups[-1]["lr"] = no_decay_lr
    return groups


def cosine_weight_decay(step: int, total_steps: int, start: float, end: float) -> float:
    """The weight decay at optimizer step ``step`` of ``total_steps``: ``start`` -> ``end`` on a cosine (DINO,
    iBOT and I-JEPA: 0.04 -> 0.4; DINO's ``utils.cosine_scheduler``, I-JEPA's ``CosineWDSchedule``)."""
    return cosine_momentum(step, total_steps, start, end)


def set_weight_decay(optimizer: torch.optim.Optimizer, value: float) -> None:
    """Set the weight decay of the decayed groups (``decayed`` is True, or, in groups built elsewhere, a weight
    decay above 0); groups of biases and norms stay at 0."""
    for group in optimizer.param_groups:
        if group.get("decayed", group.get("weight_decay", 0.0) > 0):
            group["weight_decay"] = value


def warmup_cosine(
    step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0, start_ratio: float | None = None
) -> float:
    """LR multiplier: linear warmup over ``warmup_steps`` (starting at ``start_ratio``, or at 1/warmup_steps when
    None, not 0), then cosine decay from 1 to ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        if start_ratio is not None:
            return start_ratio + (1 - start_ratio) * step / warmup_steps
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class WarmupCosineLR(LambdaLR):
    """Linear warmup then cosine decay, stepped once per optimizer step; each parameter group follows it from its
    own peak learning rate.

    ``warmup_steps`` < 1 is read as a fraction of the total. ``total_steps=None`` lets the method fill in
    ``trainer.estimated_stepping_batches`` (which accounts for epochs, limits and gradient accumulation).

    Args:
        optimizer: the optimizer whose groups' learning rates are scheduled.
        warmup_steps: warm-up length in optimizer steps; a value < 1 is a fraction of the total (10 of 800 epochs:
            0.0125).
        total_steps: schedule length in optimizer steps; None: ``trainer.estimated_stepping_batches``.
        min_lr_ratio: the final LR as a fraction of the peak, in [0, 1] (DINO: 1e-6 / 5e-4 x 256 / batch; I-JEPA:
            1e-6 / 1e-3 = 0.001; 0: down to 0).
        warmup_start_ratio: the LR of the first step as a fraction of the peak (I-JEPA: 2e-4 / 1e-3 = 0.2);
            None: 1 / warmup_steps.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: float = 0.05,
        total_steps: int | None = None,
        min_lr_ratio: float = 0.0,
        warmup_start_ratio: float | None = None,
    ) -> None:
        if warmup_steps < 0 or min_lr_ratio < 0:
            raise ValueError("warmup_steps and min_lr_ratio must be >= 0")
        if warmup_start_ratio is not None and not 0.0 <= warmup_start_ratio <= 1.0:
            raise ValueError(f"warmup_start_ratio must lie in [0, 1], got {warmup_start_ratio}")
        self.warmup, self.min_lr_ratio, self.warmup_start_ratio = warmup_steps, min_lr_ratio, warmup_start_ratio
        self.total_steps: int | None = None
        self.warmup_steps = 0
        self.anchor: tuple[int, float] | None = None  # (step, cosine progress) where a resize left the schedule
        self.ramp: tuple[int, float] | None = None  # (step, LR factor) where a resize left the warm-up
        super().__init__(optimizer, self._factor)
        if total_steps is not None:
            self.set_total_steps(total_steps)

    def set_total_steps(self, total_steps: int) -> None:
        """Fix the schedule's length (and a fractional warm-up's) and set every group's LR for the current step."""
        self.total_steps = int(total_steps)
        self.warmup_steps = round(self.warmup * total_steps) if self.warmup < 1 else int(self.warmup)
        self.anchor = self.ramp = None
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base_lr * self._factor(self.last_epoch)

    def resize(self, total_steps: int) -> None:
        """Change the schedule's length mid-run (``TimeBudget``) with the LR continuous.

        While warming up, the ramp goes on from the current LR to the peak at the warm-up the new length asks for
        (``warmup_steps`` of it), or, when that is already past, at the ramp's present slope (at most half the run).
        Past the warm-up, the cosine goes on from where it is to its end at the new last step (its progress is
        stretched or squeezed from this step on)."""
        if self.total_steps is None:
            self.set_total_steps(total_steps)
            return
        step = self.last_epoch  # the LR in use now is _factor(step)
        level, progress = self._factor(step), self._progress(step)
        self.total_steps = int(total_steps)
        if step < self.warmup_steps:
            wanted = round(self.warmup * total_steps) if self.warmup < 1 else int(self.warmup)
            if wanted <= step:
                wanted = step + 1 + round((1 - level) * self.warmup_steps)  # finish at the present slope
            self.warmup_steps = max(step + 1, min(wanted, self.total_steps // 2))
            self.ramp = (step, level)
            self.anchor = None
        else:
            self.anchor = (step, progress)

    def _progress(self, step: int) -> float:
        """How far along the cosine ``step`` is, in [0, 1]."""
        total = max(1, self.total_steps or 1)
        if self.anchor is not None and step >= self.anchor[0]:
            start, at = self.anchor
            return min(1.0, at + (1 - at) * (step - start) / max(1, total - start))
        return min(1.0, max(0.0, (step - self.warmup_steps) / max(1, total - self.warmup_steps)))

    def _factor(self, step: int) -> float:
        if self.total_steps is None:
            return 1.0
        if step < self.warmup_steps:
            if self.ramp is not None and step >= self.ramp[0]:
                start, level = self.ramp
                return level + (1 - level) * (step - start) / max(1, self.warmup_steps - 1 - start)
            return warmup_cosine(step, self.total_steps, self.warmup_steps, start_ratio=self.warmup_start_ratio)
        cosine = 0.5 * (1 + math.cos(math.pi * self._progress(step)))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * cosine


def with_schedule(
    optimizer: torch.optim.Optimizer, scheduler_fn: Callable[[torch.optim.Optimizer], Any] | None, trainer: Any
) -> Any:
    """What a method's ``configure_optimizers`` returns: ``optimizer`` alone when ``scheduler_fn`` is None, else
    with ``scheduler_fn(optimizer)`` stepped every optimizer step. A ``WarmupCosineLR`` built without a length runs
    over ``trainer.estimated_stepping_batches`` (epochs, limits and gradient accumulation accounted for).

    Args:
        optimizer: the optimizer, its groups' learning rates already at their peaks.
        scheduler_fn: a factory of the LR scheduler (a config's ``scheduler``), or None for a constant LR.
        trainer: the Lightning trainer fitting the method.

    Returns:
        The optimizer, or Lightning's ``{"optimizer", "lr_scheduler": {"scheduler", "interval": "step"}}``.
    """
    if scheduler_fn is None:
        return optimizer
    scheduler = scheduler_fn(optimizer)
    if isinstance(scheduler, WarmupCosineLR) and scheduler.total_steps is None:
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError(
                "the LR schedule runs over the whole training, which has no end here (max_epochs=-1 and no "
                "max_steps): set trainer.max_steps or max_epochs, a time budget, or the scheduler's total_steps"
            )
        scheduler.set_total_steps(int(total))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
