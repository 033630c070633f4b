"""iBOT's masked patch-token distillation (Zhou et al., "iBOT: Image BERT Pre-Training with Online Tokenizer",
ICLR 2022, eq. 2), as used in DINOv2 (Oquab et al., 2023, sec. 4).

The student sees global crops with some patches replaced by a mask token; the teacher sees them intact. At
each masked patch the student's head output must match the teacher's centered, sharpened distribution:

    P_t = softmax((h_t(patch) - C_patch) / tau_t),  P_s = softmax(h_s(masked patch) / tau_s)
    loss = (1 / B) sum_b (1 / |M_b|) sum_{i in M_b}  -sum_k P_t[i, k] log P_s[i, k]

Each image weighs the same whatever its number of masked patches; images without masked patches count in B
with zero loss (DINOv2 masks only half of the global crops). ``C_patch`` is updated like DINO's center.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ssl.losses._utils import full_precision
from lightning_ssl.losses.dino import _check_temperatures, updated_center


@full_precision
def ibot_loss(
    student_patches: Tensor,
    teacher_patches: Tensor,
    mask: Tensor,
    center: Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> Tensor:
    """Args:
    student_patches: (M, K) student logits of the masked patches, ordered as ``mask.nonzero()`` (row-major).
    teacher_patches: (M, K) teacher logits of the same patches (detached here).
    mask: (B, N) bool, True where the student's patch was masked; M = mask.sum().
    center: (1, K) running center of the teacher's patch logits.
    """
    _check_temperatures(student_temp, teacher_temp)
    mask = mask.bool()
    if student_patches.shape != teacher_patches.shape or student_patches.shape[0] != int(mask.sum()):
        raise ValueError(
            f"need (M, K) student and teacher patch logits with M = mask.sum() = {int(mask.sum())}, "
            f"got {tuple(student_patches.shape)} and {tuple(teacher_patches.shape)}"
        )
    q = F.softmax((teacher_patches.detach().float() - center.float()) / teacher_temp, dim=-1)
    per_patch = -(q * F.log_softmax(student_patches.float() / student_temp, dim=-1)).sum(-1)  # (M,)
    weights = (1.0 / mask.sum(1).clamp(min=1)).unsqueeze(1).expand_as(mask)[mask]  # 1 / |M_b| per patch
    return (per_patch * weights).sum() / mask.shape[0]


class IBOTPatchLoss(nn.Module):
    """``ibot_loss`` with its own patch center (a buffer), updated from the teacher's masked-patch logits.

    Args:
        out_dim: Output dimension K of the patch head, the center's length (8192 in iBOT, 65536 in DINOv2).
        student_temp: Student softmax temperature, > 0 (0.1 in iBOT and DINOv2).
        center_momentum: EMA rate of the patch center, in [0, 1) (0.9 in iBOT and DINOv2).
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        _check_temperatures(student_temp, 1.0)
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(
        self,
        student_patches: Tensor,
        teacher_patches: Tensor,
        mask: Tensor,
        teacher_temp: float,
        update_center: bool = True,
    ) -> Tensor:
        loss = ibot_loss(student_patches, teacher_patches, mask, self.center, self.student_temp, teacher_temp)
        if update_center:
            with torch.no_grad():
                self.center.copy_(updated_center(self.center, teacher_patches, self.center_momentum))
        return loss
