"""MAE's reconstruction loss (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022, sec. 3).

    target = patchify(image)                                   (B, N, p*p*C)
    target = (target - mean_patch) / sqrt(var_patch + eps)    per-patch normalization ("norm_pix_loss")
    loss   = sum_i mask_i * mean_j (pred_ij - target_ij)^2 / sum_i mask_i

Only masked patches count: the visible ones are what the encoder saw. Under DDP every process masks the same
number of patches per sample, so the mean over local patches averaged by DDP is the global mean.
"""

from __future__ import annotations

from torch import Tensor, nn

from lightning_ssl.losses._utils import full_precision


def normalize_patches(target: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-patch normalization of (B, N, P) pixel targets: zero mean, unit variance over each patch's P values
    (unbiased variance, as ``Tensor.var`` in the MAE reference code)."""
    mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5


@full_precision
def mae_loss(pred: Tensor, target: Tensor, mask: Tensor, norm_pix: bool = True, eps: float = 1e-6) -> Tensor:
    """Mean squared error over the masked patches.

    Args:
        pred: (B, N, P) predicted pixels of every patch.
        target: (B, N, P) patchified images.
        mask: (B, N), 1 for masked patches (the loss is taken there only), 0 for visible ones.
        norm_pix: normalize each target patch by its own mean and std (MAE's better-performing variant).
    """
    if pred.shape != target.shape or mask.shape != pred.shape[:2]:
        raise ValueError(
            f"shapes do not match: pred {tuple(pred.shape)}, target {tuple(target.shape)}, mask {tuple(mask.shape)}"
        )
    target = target.float()
    if norm_pix:
        target = normalize_patches(target, eps)
    per_patch = (pred.float() - target).pow(2).mean(dim=-1)  # (B, N)
    mask = mask.float()
    return (per_patch * mask).sum() / mask.sum().clamp(min=1.0)


class MAELoss(nn.Module):
    """``mae_loss`` as a module: predictions, target patches (B, N, p*p*C) and mask (B, N) -> scalar.

    Args:
        norm_pix: Normalize each target patch by its own mean and variance (MAE's ``norm_pix_loss``, its better
            variant).
        eps: Added to the patch variance before the square root (1e-6 in MAE).
    """

    def __init__(self, norm_pix: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm_pix, self.eps = norm_pix, eps

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        return mae_loss(pred, target, mask, self.norm_pix, self.eps)
