"""SimMIM's reconstruction loss (Xie et al., "SimMIM: A Simple Framework for Masked Image Modeling", CVPR 2022,
sec. 3 and eq. 1).

    loss = sum over masked pixels of |x_hat - x| / (number of masked pixels * channels)

L1 on the raw pixel values (the input in its normalization, no per-patch normalization), taken on the masked
patches only. Every sample masks the same number of patches, so under DDP the local mean averaged by DDP is the
global mean.
"""

from __future__ import annotations

from torch import Tensor, nn

from lightning_ssl.losses._utils import full_precision


@full_precision
def simmim_loss(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean absolute error over the masked pixels.

    Args:
        pred: (B, C, H, W) reconstruction.
        target: (B, C, H, W) input image.
        mask: (B, H, W), 1 (or True) at masked pixels.
    """
    if pred.shape != target.shape or mask.shape != (pred.shape[0], *pred.shape[2:]):
        raise ValueError(
            f"shapes do not match: pred {tuple(pred.shape)}, target {tuple(target.shape)}, "
            f"mask {tuple(mask.shape)} (want (B, H, W))"
        )
    m = mask.float().unsqueeze(1)  # (B, 1, H, W)
    per_pixel = (pred.float() - target.float()).abs()  # (B, C, H, W)
    return (per_pixel * m).sum() / (m.sum() * pred.shape[1]).clamp(min=1.0)


class SimMIMLoss(nn.Module):
    """``simmim_loss`` as a module: predicted and target pixels and the pixel mask -> scalar; no arguments."""

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        return simmim_loss(pred, target, mask)
