"""DINO's self-distillation loss with centering and sharpening (Caron et al., "Emerging Properties in
Self-Supervised Vision Transformers", ICCV 2021, alg. 1).

    P_t = softmax((g_t(x) - C) / tau_t)       teacher: centered, sharpened (tau_t = 0.04 -> 0.07), no gradient
    P_s = softmax(g_s(x') / tau_s)            student (tau_s = 0.1)
    loss = mean over pairs (t, s), t != s, of  mean_b  -sum_k P_t[b, k] log P_s[b, k]
    C <- m C + (1 - m) mean_b g_t(x_b)        m = 0.9, the mean over the *global* batch (all processes)

Teacher views are the global crops; student views are the global crops (same order) followed by the local
crops, so pair (t, s) with t == s (a global crop against itself) is skipped. Centering keeps one dimension
from dominating, sharpening keeps the output from going uniform: together they avoid collapse.

DINOv2 (Oquab et al., 2023, sec. 4; facebookresearch/dinov2 ``dinov2/loss/dino_clstoken_loss.py``) replaces the
EMA center by Sinkhorn-Knopp centering (``centering="sinkhorn"``): the teacher's targets for the G x B global crops
are the columns of the transport plan ``sinkhorn_knopp_teacher`` finds between them and the K prototypes, with
uniform marginals over the *global* batch (3 iterations, exp(logits / tau_t)), so no center is kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ssl.losses._utils import full_precision
from lightning_ssl.losses.swav import sinkhorn
from lightning_ssl.modules.distributed import all_reduce_mean

CENTERINGS = ("ema", "sinkhorn")


def _check_temperatures(student_temp: float, teacher_temp: float) -> None:
    if not (student_temp > 0 and teacher_temp > 0):
        raise ValueError(f"temperatures must be > 0, got student {student_temp}, teacher {teacher_temp}")


def _check_centering(centering: str) -> None:
    if centering not in CENTERINGS:
        raise ValueError(f"centering must be 'ema' (DINO's EMA center) or 'sinkhorn' (DINOv2), got {centering!r}")


@torch.no_grad()
def sinkhorn_knopp_teacher(teacher_out: Tensor, teacher_temp: float, iterations: int = 3) -> Tensor:
    """DINOv2's Sinkhorn-Knopp centering of teacher logits (``sinkhorn_knopp_teacher`` of
    ``dinov2/loss/dino_clstoken_loss.py`` and ``ibot_patch_loss.py``).

    Args:
        teacher_out: (M, K) teacher logits of this process's rows (all global crops, or iBOT's masked patches).
        teacher_temp: the sharpening temperature tau_t (0.04 -> 0.07), the entropic regularization of the plan.
        iterations: Sinkhorn-Knopp iterations (3 in DINOv2).
    Returns:
        (M, K) teacher probabilities, each row summing to 1, with every prototype getting 1/K of the mass over
        the rows of *all* processes (sums and the row count are all-reduced; the rows may differ in number).
    """
    return sinkhorn(teacher_out, epsilon=teacher_temp, iterations=iterations)


@full_precision
def dino_cross_entropy(student_out: Sequence[Tensor], teacher_probs: Sequence[Tensor], student_temp: float) -> Tensor:
    """Mean over the pairs (t, s), t != s, of ``mean_b -sum_k P_t[b, k] log softmax(s[b] / tau_s)_k``.

    Args:
        student_out: S tensors (B, K) of student logits: the global crops first (in the teacher's order), then the
            local crops.
        teacher_probs: T tensors (B, K) of teacher probabilities for the global crops (centered and sharpened).
        student_temp: the student temperature tau_s (0.1).
    Returns:
        the mean over the S*T - min(S, T) pairs of views that are not the same crop.
    """
    logp = torch.stack([F.log_softmax(s.float() / student_temp, dim=-1) for s in student_out])  # (S, B, K)
    q = torch.stack([t.detach().float() for t in teacher_probs])  # (T, B, K)
    ce = -torch.einsum("tbk,sbk->ts", q, logp) / q.shape[1]  # (T, S): mean over the batch per pair
    same = torch.eye(len(teacher_probs), len(student_out), dtype=torch.bool, device=ce.device)
    return ce[~same].mean()


@full_precision
def dino_loss(
    student_out: Sequence[Tensor],
    teacher_out: Sequence[Tensor],
    center: Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> Tensor:
    """Cross-entropy between centered, sharpened teacher distributions and student distributions.

    Args:
        student_out: S tensors (B, K) of student logits: the global crops first (in the teacher's order),
            then the local crops.
        teacher_out: T tensors (B, K) of teacher logits for the global crops (detached here).
        center: (1, K) or (K,) running center of the teacher logits.
        student_temp: tau_s (0.1).
        teacher_temp: tau_t (0.04 -> 0.07).
    Returns: the mean over the S*T - min(S, T) pairs of views that are not the same crop.
    """
    _check_temperatures(student_temp, teacher_temp)
    q = [F.softmax((t.detach().float() - center.float()) / teacher_temp, dim=-1) for t in teacher_out]
    return dino_cross_entropy(student_out, q, student_temp)


@torch.no_grad()
def updated_center(center: Tensor, teacher_out: Tensor, momentum: float = 0.9) -> Tensor:
    """``momentum * center + (1 - momentum) * mean of teacher_out (M, K)`` over the rows of *all* processes.

    Sum and row count are all-reduced together, so the mean is exact even when processes hold different
    numbers of rows (iBOT's masked patches); no-op reduction on one process."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"center momentum must lie in [0, 1], got {momentum}")
    t = teacher_out.detach().float().reshape(-1, teacher_out.shape[-1])
    stats = torch.cat([t.sum(0), t.new_tensor([len(t)])])
    all_reduce_mean(stats)  # mean of sums / mean of counts = global sum / global count
    if stats[-1] == 0:  # nothing anywhere (e.g. no masked patch in this step): keep the center
        return center
    batch_center = (stats[:-1] / stats[-1]).view_as(center)
    return center * momentum + batch_center.to(center.dtype) * (1 - momentum)


class DINOLoss(nn.Module):
    """``dino_loss`` with its center as a buffer (saved in checkpoints), updated after each loss evaluation
    from the teacher logits, as in the reference implementation; or DINOv2's Sinkhorn-Knopp centering.

    Args:
        out_dim: K, the number of prototypes (the head's output width).
        student_temp: tau_s (0.1).
        center_momentum: m of the EMA center (0.9); unused with Sinkhorn centering.
        centering: ``"ema"`` (DINO's center) or ``"sinkhorn"`` (DINOv2's ``sinkhorn_knopp`` over the global
            batch; the center buffer stays at 0).
        sinkhorn_iterations: Sinkhorn-Knopp iterations (3 in DINOv2).
    """

    center: Tensor  # (1, K) EMA of the teacher outputs (a buffer)

    def __init__(
        self,
        out_dim: int,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        centering: str = "ema",
        sinkhorn_iterations: int = 3,
    ) -> None:
        super().__init__()
        _check_temperatures(student_temp, 1.0)
        _check_centering(centering)
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center momentum must lie in [0, 1], got {center_momentum}")
        if sinkhorn_iterations < 1:
            raise ValueError(f"sinkhorn_iterations must be >= 1, got {sinkhorn_iterations}")
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.centering, self.sinkhorn_iterations = centering, sinkhorn_iterations
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(
        self,
        student_out: Sequence[Tensor],
        teacher_out: Sequence[Tensor],
        teacher_temp: float,
        update_center: bool = True,
    ) -> Tensor:
        if self.centering == "sinkhorn":  # one plan over all global crops, as DINOv2's ssl_meta_arch
            _check_temperatures(self.student_temp, teacher_temp)
            q = sinkhorn_knopp_teacher(torch.cat(list(teacher_out)), teacher_temp, self.sinkhorn_iterations)
            return dino_cross_entropy(student_out, q.chunk(len(teacher_out)), self.student_temp)
        loss = dino_loss(student_out, teacher_out, self.center, self.student_temp, teacher_temp)
        if update_center:
            self.update_center(torch.cat(list(teacher_out)))
        return loss

    @torch.no_grad()
    def update_center(self, teacher_out: Tensor) -> None:
        self.center.copy_(updated_center(self.center, teacher_out, self.center_momentum))
