"""iBOT's masked patch-token distillation (Zhou et al., "iBOT: Image BERT Pre-Training with Online Tokenizer",
ICLR 2022, eq. 2), as used in DINOv2 (Oquab et al., 2023, sec. 4).

The student sees global crops with some patches replaced by a mask token; the teacher sees them intact. At
each masked patch the student's head output must match the teacher's centered, sharpened distribution:

    P_t = softmax((h_t(patch) - C_patch) / tau_t),  P_s = softmax(h_s(masked patch) / tau_s)
    loss = (1 / B) sum_b (1 / |M_b|) sum_{i in M_b}  -sum_k P_t[i, k] log P_s[i, k]

Each image weighs the same whatever its number of masked patches; images without masked patches count in B
with zero loss (DINOv2 masks only half of the global crops). ``C_patch`` is updated like DINO's center, or, with
``centering="sinkhorn"`` (DINOv2, ``dinov2/loss/ibot_patch_loss.py``), P_t is Sinkhorn-Knopp centered over the
masked patches of all processes, their global count being the number of samples to assign.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ssl.losses._utils import full_precision
from lightning_ssl.losses.dino import _check_centering, _check_temperatures, sinkhorn_knopp_teacher, updated_center


def _check_shapes(student_patches: Tensor, teacher_patches: Tensor, mask: Tensor) -> None:
    if student_patches.shape != teacher_patches.shape or student_patches.shape[0] != int(mask.sum()):
        raise ValueError(
            f"need (M, K) student and teacher patch logits with M = mask.sum() = {int(mask.sum())}, "
            f"got {tuple(student_patches.shape)} and {tuple(teacher_patches.shape)}"
        )


@full_precision
def ibot_cross_entropy(student_patches: Tensor, teacher_probs: Tensor, mask: Tensor, student_temp: float) -> Tensor:
    """``(1 / B) sum_b (1 / |M_b|) sum_{i in M_b} -sum_k P_t[i, k] log softmax(s_i / tau_s)_k``.

    Args:
        student_patches: (M, K) student logits of the masked patches, ordered as ``mask.nonzero()`` (row-major).
        teacher_probs: (M, K) teacher probabilities of the same patches (centered and sharpened).
        mask: (B, N) bool, True where the student's patch was masked; M = mask.sum().
        student_temp: tau_s (0.1).
    Returns:
        the scalar loss (0 for images without masked patches, which still count in B).
    """
    mask = mask.bool()
    _check_shapes(student_patches, teacher_probs, mask)
    per_patch = -(teacher_probs.detach().float() * F.log_softmax(student_patches.float() / student_temp, dim=-1))
    weights = (1.0 / mask.sum(1).clamp(min=1)).unsqueeze(1).expand_as(mask)[mask]  # 1 / |M_b| per patch
    return (per_patch.sum(-1) * weights).sum() / mask.shape[0]


@full_precision
def ibot_loss(
    student_patches: Tensor,
    teacher_patches: Tensor,
    mask: Tensor,
    center: Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> Tensor:
    """iBOT's loss with the EMA-centered teacher.

    Args:
        student_patches: (M, K) student logits of the masked patches, ordered as ``mask.nonzero()`` (row-major).
        teacher_patches: (M, K) teacher logits of the same patches (detached here).
        mask: (B, N) bool, True where the student's patch was masked; M = mask.sum().
        center: (1, K) running center of the teacher's patch logits.
        student_temp: tau_s (0.1).
        teacher_temp: tau_t (0.04 -> 0.07).
    Returns:
        the scalar loss.
    """
    _check_temperatures(student_temp, teacher_temp)
    _check_shapes(student_patches, teacher_patches, mask.bool())
    q = F.softmax((teacher_patches.detach().float() - center.float()) / teacher_temp, dim=-1)
    return ibot_cross_entropy(student_patches, q, mask, student_temp)


class IBOTPatchLoss(nn.Module):
    """``ibot_loss`` with its own patch center (a buffer), updated from the teacher's masked-patch logits; or
    DINOv2's Sinkhorn-Knopp centering over the masked patches of the global batch.

    Args:
        out_dim: K, the number of patch prototypes.
        student_temp: tau_s (0.1).
        center_momentum: m of the EMA patch center (0.9); unused with Sinkhorn centering.
        centering: ``"ema"`` or ``"sinkhorn"`` (DINOv2).
        sinkhorn_iterations: Sinkhorn-Knopp iterations (3 in DINOv2).
    """

    center: Tensor  # (1, K) EMA of the teacher patch outputs (a buffer)

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
        if sinkhorn_iterations < 1:
            raise ValueError(f"sinkhorn_iterations must be >= 1, got {sinkhorn_iterations}")
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.centering, self.sinkhorn_iterations = centering, sinkhorn_iterations
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(
        self,
        student_patches: Tensor,
        teacher_patches: Tensor,
        mask: Tensor,
        teacher_temp: float,
        update_center: bool = True,
    ) -> Tensor:
        if self.centering == "sinkhorn":  # the masked patches of all processes, their global count as DINOv2
            _check_temperatures(self.student_temp, teacher_temp)
            q = sinkhorn_knopp_teacher(teacher_patches, teacher_temp, self.sinkhorn_iterations)
            return ibot_cross_entropy(student_patches, q, mask, self.student_temp)
        loss = ibot_loss(student_patches, teacher_patches, mask, self.center, self.student_temp, teacher_temp)
        if update_center:
            with torch.no_grad():
                self.center.copy_(updated_center(self.center, teacher_patches, self.center_momentum))
        return loss
