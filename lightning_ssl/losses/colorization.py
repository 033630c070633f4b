"""Colorization losses (Zhang, Isola & Efros, "Colorful Image Colorization", ECCV 2016).

- ``colorization_loss``: multinomial cross-entropy over quantized ab bins (eq. 2), each pixel weighted by the
  class-rebalancing weight of its target's most likely bin (eq. 3). Targets are soft (a distribution over bins,
  the paper's soft encoding) or hard (bin indices).
- ``ab_regression_loss``: the Euclidean baseline (eq. 1), mean squared error on ab; it averages over the
  plausible colours of an object and so gives greyish, desaturated pictures, which motivated the classification.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lightning_ssl.losses._utils import full_precision


@full_precision
def colorization_loss(logits: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
    """Args:
        logits: (B, Q, H, W) scores over the Q ab bins.
        target: (B, Q, H, W) distributions over bins, or (B, H, W) bin indices.
        weights: (Q,) class-rebalancing weights, or None for the plain cross-entropy.
    Returns: the mean over pixels of the (weighted) cross-entropy.
    """
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, Q, H, W), got shape {tuple(logits.shape)}")
    log_p = F.log_softmax(logits.float(), dim=1)
    if target.ndim == 3:
        ce = -log_p.gather(1, target.unsqueeze(1)).squeeze(1)
        nearest = target
    else:
        ce = -(target.float() * log_p).sum(1)
        nearest = target.argmax(1)
    if weights is not None:
        ce = ce * weights.to(ce.device)[nearest]
    return ce.mean()


@full_precision
def ab_regression_loss(pred: Tensor, ab: Tensor, scale: float = 110.0) -> Tensor:
    """Mean squared error between predicted and true ab (B, 2, H, W), both divided by ``scale`` (so ~[-1, 1])."""
    return F.mse_loss(pred.float() / scale, ab.float() / scale)
