"""Gram anchoring (Siméoni et al., "DINOv3", 2025, sec. 4.2; facebookresearch/dinov3 ``dinov3/loss/gram_loss.py``).

Late in long DINO training the patch features lose their locality: the loss is on the CLS token and on masked
patches, and nothing stops every patch from drifting towards the image's global feature. Gram anchoring keeps the
*similarity structure* of the student's patch features close to that of an earlier model, the Gram teacher, whose
dense features were still good, while leaving the features themselves free to move:

    X_s = normalize(student patch features)      (B, N, D)    rows of unit norm
    X_g = normalize(Gram teacher patch features)  (B, N, D)
    loss = || X_s X_s^T - X_g X_g^T ||_F^2 / (B N^2)    the MSE between the two (B, N, N) Gram matrices

per image (``img_level=True``, DINOv3's Gram-anchoring recipe), or over all patches of the local batch as one
(B*N, B*N) matrix (``img_level=False``). The reference can also zero the negative similarities first
(``remove_neg``; off in its recipes). Its ``remove_only_teacher_neg`` option is left out: it clamps the teacher's
matrix before testing it for negatives, so it only ever clamps the teacher.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ssl.losses._utils import full_precision


@full_precision
def gram_loss(
    student_patches: Tensor,
    teacher_patches: Tensor,
    img_level: bool = True,
    normalize: bool = True,
    remove_neg: bool = False,
) -> Tensor:
    """MSE between the patch-to-patch cosine-similarity (Gram) matrices of the student and the Gram teacher.

    Args:
        student_patches: (B, N, D) student patch features (after the backbone's final norm), or (M, D).
        teacher_patches: (B, N, D) Gram-teacher patch features of the same patches (detached here), or (M, D).
        img_level: one (N, N) Gram matrix per image (True, DINOv3's recipe) or one over all B*N patches of this
            process (False). (M, D) inputs are one set of patches.
        normalize: L2-normalize the features first (cosine similarities; True in DINOv3).
        remove_neg: set negative similarities of both matrices to 0 (False in DINOv3's recipes).
    Returns:
        the scalar mean squared difference of the Gram matrices.
    """
    if student_patches.shape != teacher_patches.shape or student_patches.ndim not in (2, 3):
        raise ValueError(
            f"need (B, N, D) or (M, D) student and Gram-teacher patch features of one shape, got "
            f"{tuple(student_patches.shape)} and {tuple(teacher_patches.shape)}"
        )
    s, t = student_patches.float(), teacher_patches.detach().float()
    if normalize:
        s, t = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    if not img_level and s.ndim == 3:
        s, t = s.flatten(0, 1), t.flatten(0, 1)
    gram_s, gram_t = s @ s.transpose(-1, -2), t @ t.transpose(-1, -2)
    if remove_neg:
        gram_s, gram_t = gram_s.clamp(min=0), gram_t.clamp(min=0)
    return F.mse_loss(gram_s, gram_t)


class GramLoss(nn.Module):
    """``gram_loss`` as a module.

    Args:
        img_level: one Gram matrix per image (True) or per process batch (False).
        normalize: cosine similarities (True in DINOv3).
        remove_neg: zero the negative similarities of both matrices.
    """

    def __init__(self, img_level: bool = True, normalize: bool = True, remove_neg: bool = False) -> None:
        super().__init__()
        self.img_level, self.normalize, self.remove_neg = img_level, normalize, remove_neg

    def forward(self, student_patches: Tensor, teacher_patches: Tensor) -> Tensor:
        return gram_loss(student_patches, teacher_patches, self.img_level, self.normalize, self.remove_neg)
