"""Optimizer helpers: parameter groups without weight decay on biases/norms, and a warmup + cosine LR schedule
driven by the optimizer step count. LARS comes from timm (``timm.optim.Lars``)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR


def param_groups(modules: Iterable[nn.Module] | nn.Module, weight_decay_1d: bool = False) -> list[dict]:
    """Split parameters into a decayed group (weights, ndim >= 2) and a group with ``weight_decay=0``
    (biases and normalization parameters), as in SimCLR/BYOL/MAE. Frozen parameters are left out."""
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
    groups = [{"params": decay, "decayed": True}]  # "decayed" marks the group for weight-decay schedules (DINO)
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "decayed": False})
    return groups


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warmup over ``warmup_steps`` (starting at 1/warmup_steps, not 0), then cosine
    decay from 1 to ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class WarmupCosineLR(LambdaLR):
    """Linear warmup then cosine decay, stepped once per optimizer step.

    ``warmup_steps`` < 1 is read as a fraction of the total. ``total_steps=None`` lets the method fill in
    ``trainer.estimated_stepping_batches`` (which accounts for epochs, limits and gradient accumulation).

    Args:
        optimizer: The optimizer whose learning rates are scheduled.
        warmup_steps: Linear warm-up length in optimizer steps, or a fraction of the total when < 1 (0.05).
        total_steps: Schedule length in optimizer steps; None: ``trainer.estimated_stepping_batches``.
        min_lr_ratio: Final learning rate as a fraction of the peak, in [0, 1] (0: decay to zero).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: float = 0.05,
        total_steps: int | None = None,
        min_lr_ratio: float = 0.0,
    ) -> None:
        if warmup_steps < 0 or min_lr_ratio < 0:
            raise ValueError("warmup_steps and min_lr_ratio must be >= 0")
        self.warmup, self.min_lr_ratio = warmup_steps, min_lr_ratio
        self.total_steps: int | None = None
        self.warmup_steps = 0
        self.anchor: tuple[int, float] | None = None  # (step, cosine progress) where a resize left the schedule
        self.ramp: tuple[int, float] | None = None  # (step, LR factor) where a resize left the warm-up
        super().__init__(optimizer, self._factor)
        if total_steps is not None:
            self.set_total_steps(total_steps)

    def set_total_steps(self, total_steps: int) -> None:
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
            return (step + 1) / self.warmup_steps
        cosine = 0.5 * (1 + math.cos(math.pi * self._progress(step)))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * cosine
