"""The Gram teacher of DINOv3's Gram anchoring (Siméoni et al., 2025, sec. 4.2): a frozen snapshot of the EMA
teacher's backbone, taken when Gram anchoring starts and refreshed on a schedule, whose patch-similarity (Gram)
matrices the student is held to (``losses.gram.gram_loss``).

The schedule is the reference's (facebookresearch/dinov3 ``dinov3/train/train.py``): before optimizer step
``start`` the EMA teacher is copied in (``gram.it_load_ema_teacher``) and the loss switches on; then, with
``update_every``, it is copied again every ``update_every`` steps (``gram.update_frequency``), at most
``max_updates`` times (``gram.max_updates``). A value below 1 is a fraction of the run's optimizer steps
(``trainer.estimated_stepping_batches``), so a schedule survives a change of epochs or a time budget (whose length
may still move while it calibrates: the snapshot is taken at the first step at or after ``start``, and the loss waits
for it); outside a Trainer a fraction resolves to step 0. The snapshot and its bookkeeping (snapshots taken, step of
the last) are module state: checkpoints save them and a resumed run goes on with the same ones.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from lightning_ssl.modules.momentum import make_teacher, update_momentum
from lightning_ssl.modules.vit import ViT


def resolve_steps(value: float, total_steps: int) -> int:
    """``value`` >= 1 (or 0): a step count; 0 < ``value`` < 1: that fraction of ``total_steps``, rounded."""
    return int(value) if value >= 1 or value == 0 else round(value * total_steps)


class GramTeacher(nn.Module):
    """A frozen copy of a (teacher) ViT backbone and the schedule that refreshes it.

    Args:
        backbone: the EMA teacher's backbone (a ``lightning_ssl.modules.vit.ViT``); it is copied and frozen, with
            the teacher's settings (no dropout or drop path).
        start: the optimizer step at which the snapshot is taken and the Gram loss switches on (DINOv3: 1M of its
            1.2M iterations, i.e. 0.83 of the run); below 1, a fraction of the run.
        update_every: refresh the snapshot from the EMA teacher every this many steps after ``start`` (DINOv3:
            10,000); below 1, a fraction of the run; None: never.
        max_updates: at most this many refreshes (DINOv3: 3); None: no limit.
    """

    taken: Tensor
    last_step: Tensor

    def __init__(
        self, backbone: nn.Module, start: float = 0, update_every: float | None = None, max_updates: int | None = None
    ) -> None:
        super().__init__()
        if not hasattr(backbone, "forward_tokens"):
            raise ValueError(
                f"Gram anchoring needs a ViT backbone with patch tokens (lightning_ssl.modules.vit.ViT), "
                f"got {type(backbone).__name__}"
            )
        if start < 0:
            raise ValueError(f"the Gram anchoring start must be >= 0 (a step, or a fraction of the run), got {start}")
        if update_every is not None and update_every <= 0:
            raise ValueError(f"the Gram teacher's update_every must be > 0 (or None: never), got {update_every}")
        if max_updates is not None and max_updates < 0:
            raise ValueError(f"the Gram teacher's max_updates must be >= 0 (or None: no limit), got {max_updates}")
        self.backbone = cast(ViT, make_teacher(backbone))  # a ViT, or a backbone with its forward_tokens
        self.start, self.update_every, self.max_updates = start, update_every, max_updates
        # a start at step 0 is the copy just made (the teacher before any step)
        self.register_buffer("taken", torch.tensor(int(start == 0)))  # snapshots taken: the first + refreshes
        self.register_buffer("last_step", torch.tensor(0))  # the step before which the last one was taken

    def active(self, step: int, total_steps: int) -> bool:
        """Whether the Gram loss applies at optimizer step ``step`` (0-based): from ``start``, with a snapshot taken."""
        return step >= resolve_steps(self.start, total_steps) and int(self.taken) > 0

    def due(self, step: int, total_steps: int) -> bool:
        """Whether the snapshot is (re)taken before optimizer step ``step`` (after ``step`` steps are done)."""
        if step < resolve_steps(self.start, total_steps):
            return False
        taken = int(self.taken)
        if taken == 0:
            return True
        if self.update_every is None or (self.max_updates is not None and taken - 1 >= self.max_updates):
            return False
        return step - int(self.last_step) >= max(1, resolve_steps(self.update_every, total_steps))

    @torch.no_grad()
    def refresh(self, teacher_backbone: nn.Module, step: int) -> None:
        """Copy the EMA teacher's weights in (DINOv3's ``update_gram(m=0)``) before optimizer step ``step``."""
        update_momentum(teacher_backbone, self.backbone, 0.0)
        self.taken.add_(1)
        self.last_step.fill_(step)

    @torch.no_grad()
    def patches(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> the snapshot's normalized patch tokens (B, N, D)."""
        return self.backbone.forward_tokens(x)[:, 1:]
