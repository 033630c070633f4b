"""I-JEPA's loss in representation space (Assran et al., "Self-Supervised Learning from Images with a
Joint-Embedding Predictive Architecture", CVPR 2023, eq. 1).

    s_y = LayerNorm(target encoder tokens at the target blocks)       no affine parameters, no gradient
    loss = mean over blocks, patches and channels of  smooth_l1(pred - s_y)     (beta = 1)

The paper writes the average squared L2 distance; facebookresearch/ijepa (``src/train.py``) trains with
``F.smooth_l1_loss(z, h)`` on the layer-normed targets, which is the default here (``kind="smooth_l1"``);
``kind="mse"`` gives the paper's L2 form. Every process has the same number of target tokens (the masks share
their kept-token count), so the local mean averaged by DDP is the global mean.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ssl.losses._utils import full_precision

KINDS = ("smooth_l1", "mse")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"I-JEPA loss kind must be one of {KINDS}, got {kind!r}")


@full_precision
def ijepa_loss(pred: Tensor, target: Tensor, kind: str = "smooth_l1", normalize_target: bool = True) -> Tensor:
    """Predicted (..., D) vs target-encoder (..., D) representations of the target patches; the targets are
    detached and layer-normed over D (``normalize_target``) before the comparison."""
    _check_kind(kind)
    if pred.shape != target.shape:
        raise ValueError(f"predictions {tuple(pred.shape)} and targets {tuple(target.shape)} differ in shape")
    target = target.detach().float()
    if normalize_target:
        target = F.layer_norm(target, target.shape[-1:])
    pred = pred.float()
    return F.smooth_l1_loss(pred, target) if kind == "smooth_l1" else F.mse_loss(pred, target)


class IJEPALoss(nn.Module):
    """``ijepa_loss`` as a module: predictions and target features (B, M, K, D) -> scalar.

    Args:
        kind: ``"smooth_l1"`` (the reference code's ``F.smooth_l1_loss``) or ``"mse"`` (the paper's L2).
        normalize_target: Layer-normalize the target features over D first (the reference does).
    """

    def __init__(self, kind: str = "smooth_l1", normalize_target: bool = True) -> None:
        super().__init__()
        _check_kind(kind)
        self.kind, self.normalize_target = kind, normalize_target

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return ijepa_loss(pred, target, self.kind, self.normalize_target)
