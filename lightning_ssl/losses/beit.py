"""BEiT's losses (Bao et al., 2021; Peng et al., 2022, BEiT v2).

Masked image modelling on visual tokens: for the masked positions M of each image, with token ids t_i from a
frozen tokenizer and the ViT's logits over the vocabulary,
    loss = sum_{i in M} -log softmax(logits_i)[t_i] / |M|          (cross-entropy on masked positions only)
Under DDP the masks hold different numbers of patches on each process, so the method divides the local sum by
the global count / world size (``normalizer``): DDP's gradient average is then the gradient of the global mean.

VQ-KD's reconstruction loss (the tokenizer's decoder predicts the teacher's patch features f_i):
    loss = mean_i (1 - cos(pred_i, f_i))
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lightning_ssl.losses._utils import full_precision


@full_precision
def masked_token_loss(
    logits: Tensor, targets: Tensor, mask: Tensor | None = None, normalizer: float | Tensor | None = None
) -> Tensor:
    """Cross-entropy of the token ids at masked positions.

    Args:
        logits: (B, N, V) for every position with ``mask`` (B, N) bool, or (M, V) for the masked positions only.
        targets: (B, N) or (M,) token ids.
        normalizer: what the summed cross-entropy is divided by (default: the number of masked positions).
    """
    if mask is not None:
        if mask.shape != logits.shape[:2] or targets.shape != mask.shape:
            raise ValueError(
                f"shapes do not match: logits {tuple(logits.shape)}, targets {tuple(targets.shape)}, "
                f"mask {tuple(mask.shape)}"
            )
        logits, targets = logits[mask.bool()], targets[mask.bool()]
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits (M, V) and targets (M,), got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    total = F.cross_entropy(logits.float(), targets.long(), reduction="sum")
    if normalizer is None:
        normalizer = max(1, targets.numel())
    return total / normalizer


@full_precision
def feature_cosine_loss(pred: Tensor, target: Tensor) -> Tensor:
    """1 - cosine similarity, averaged over all positions: pred and target (..., D)."""
    if pred.shape != target.shape:
        raise ValueError(f"shapes do not match: pred {tuple(pred.shape)}, target {tuple(target.shape)}")
    return (1 - F.cosine_similarity(pred.float(), target.float(), dim=-1)).mean()
