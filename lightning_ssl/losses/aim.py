"""AIM's autoregressive pixel loss (El-Nouby et al., "Scalable Pre-training of Large Autoregressive Image Models",
ICML 2024, sec. 3, eqs. 1-3).

An image's N patches are read in raster order; a prefix of S patches (S ~ U{1, ..., N-1} per image) is context,
and every later patch is predicted from the patches before it:

    target_k = normalize(x_k)                        per-patch normalized pixels (zero mean, unit variance), as MAE
    loss     = mean_b  1 / (N - S_b)  sum_{k = S_b}^{N-1}  mean_j (x_hat_k - target_k)_j^2        (0-based k)

where x_hat_k is read from the network's output at position k - 1 (it has seen patches 0..k-1 only). The
prefix patches are not predicted. Each image weighs the same, whatever its prefix, so under DDP the mean over
local images averaged by DDP is the mean over the global batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_ssl.losses._utils import full_precision
from lightning_ssl.losses.mae import normalize_patches


@full_precision
def aim_loss(pred: Tensor, patches: Tensor, prefix_len: Tensor, norm_pix: bool = True, eps: float = 1e-6) -> Tensor:
    """Next-patch MSE on the non-prefix patches.

    Args:
        pred: (B, N, P) network outputs; ``pred[:, k]`` is the prediction of patch k + 1 (the last is unused).
        patches: (B, N, P) patchified images (``modules.masking.patchify``), raster order.
        prefix_len: (B,) integer prefix lengths S in [1, N - 1].
        norm_pix: normalize each target patch by its own mean and (unbiased) std (AIM's targets).
        eps: added to the variance.
    Returns:
        the scalar loss.
    """
    if pred.shape != patches.shape or pred.ndim != 3 or prefix_len.shape != pred.shape[:1]:
        raise ValueError(
            f"need (B, N, P) predictions and patches and (B,) prefix lengths, got {tuple(pred.shape)}, "
            f"{tuple(patches.shape)} and {tuple(prefix_len.shape)}"
        )
    n = pred.shape[1]
    if bool((prefix_len < 1).any()) or bool((prefix_len > n - 1).any()):
        raise ValueError(f"prefix lengths must lie in [1, N - 1] = [1, {n - 1}], got {prefix_len.tolist()}")
    target = normalize_patches(patches.float(), eps) if norm_pix else patches.float()
    err = (pred[:, :-1].float() - target[:, 1:]).pow(2).mean(-1)  # (B, N - 1): error on patch k = 1..N-1
    k = torch.arange(1, n, device=pred.device)
    predicted = (k[None] >= prefix_len[:, None].to(pred.device)).float()  # (B, N - 1): patch k is not prefix
    return ((err * predicted).sum(1) / predicted.sum(1)).mean()


class AIMLoss(nn.Module):
    """``aim_loss`` as a module.

    Args:
        norm_pix: per-patch normalized pixel targets (True in AIM).
        eps: added to each patch's variance.
    """

    def __init__(self, norm_pix: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm_pix, self.eps = norm_pix, eps

    def forward(self, pred: Tensor, patches: Tensor, prefix_len: Tensor) -> Tensor:
        return aim_loss(pred, patches, prefix_len, self.norm_pix, self.eps)
