"""DenseCL's loss: Dense Contrastive Learning (Wang, Zhang, Shen, Kong & Li, "Dense Contrastive Learning for
Self-Supervised Visual Pre-Training", CVPR 2021, eq. 1-3; code: WXinlong/DenseCL, openselfsup/models/densecl.py).

    q, k: (B, P) global projections of the query view and of the key view (momentum encoder)
    q_dense, k_dense: (B, P, S) dense projections of the two views' feature-map cells (S = h * w)
    f_q, f_k: (B, C, S) the backbones' feature maps of the two views
    match(s) = argmax_t cos(f_q[:, :, s], f_k[:, :, t])      the key cell most similar in backbone features
    L_global = InfoNCE(q, k+, global queue)                   MoCo v2 (queue only: no in-batch negatives)
    L_dense = mean over cells s of InfoNCE(q_dense_s, k_dense_match(s)+, dense queue)
    loss = (1 - lambda) * L_global + lambda * L_dense          lambda = 0.5, temperature 0.2

The dense queue holds the keys' *pooled* dense projections (the mean of k_dense over the cells), as the reference.
The correspondence is a hard argmax (no gradient), computed from the backbone's features rather than from the
projections, as the reference. Both terms are means over this process's rows, which DDP averages over processes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_ssl.losses._utils import full_precision
from lightning_ssl.losses.info_nce import info_nce_loss


def check_dense_weight(dense_weight: float) -> None:
    """Refuse a dense-loss weight outside [0, 1] (the loss is a convex combination of the two terms)."""
    if not 0.0 <= dense_weight <= 1.0:
        raise ValueError(
            f"dense_weight must lie in [0, 1] (loss = (1 - lambda) * global + lambda * dense), got {dense_weight}; "
            f"the paper uses 0.5"
        )


@torch.no_grad()
def dense_correspondence(f_q: Tensor, f_k: Tensor) -> Tensor:
    """For every cell of the query's feature map, the index of the most similar cell (cosine) of the key's map.

    Args:
        f_q: (B, C, S) or (B, C, h, w) feature map of the query view.
        f_k: (B, C, S') or (B, C, h', w') feature map of the key view.

    Returns:
        (B, S) long tensor of indices into the S' key cells.
    """
    f_q, f_k = F.normalize(f_q.flatten(2).float(), dim=1), F.normalize(f_k.flatten(2).float(), dim=1)
    return (f_q.transpose(1, 2) @ f_k).argmax(dim=2)  # (B, S, S') similarities -> (B, S)


@full_precision
def dense_info_nce_loss(
    q_dense: Tensor, k_dense: Tensor, match: Tensor, negatives: Tensor, temperature: float = 0.2
) -> Tensor:
    """InfoNCE of every query cell against its matched key cell, with the rows of ``negatives`` as negatives.

    Args:
        q_dense: (B, P, S) or (B, P, h, w) dense projections of the query view.
        k_dense: (B, P, S') or (B, P, h', w') dense projections of the key view (detached: momentum encoder).
        match: (B, S) index of each query cell's positive key cell (``dense_correspondence``).
        negatives: (K, P) dense queue.
        temperature: Softmax temperature tau > 0 (the paper: 0.2).

    Returns:
        Scalar: the mean over the B * S query cells.
    """
    q_dense, k_dense = q_dense.flatten(2), k_dense.flatten(2)
    if match.shape != (q_dense.shape[0], q_dense.shape[2]):
        raise ValueError(f"match must be (B, S) = {(q_dense.shape[0], q_dense.shape[2])}, got {tuple(match.shape)}")
    positives = k_dense.gather(2, match.unsqueeze(1).expand(-1, k_dense.shape[1], -1))  # (B, P, S)
    cells = q_dense.transpose(1, 2).reshape(-1, q_dense.shape[1])  # (B * S, P)
    keys = positives.transpose(1, 2).reshape(-1, q_dense.shape[1])
    return info_nce_loss(cells, keys, temperature, negatives, in_batch_negatives=False)


def densecl_terms(
    q: Tensor,
    k: Tensor,
    q_dense: Tensor,
    k_dense: Tensor,
    f_q: Tensor,
    f_k: Tensor,
    queue: Tensor,
    dense_queue: Tensor,
    temperature: float = 0.2,
) -> tuple[Tensor, Tensor]:
    """DenseCL's global and dense InfoNCE terms, unweighted (arguments as in ``densecl_loss``)."""
    global_term = info_nce_loss(q, k, temperature, queue, in_batch_negatives=False)
    dense_term = dense_info_nce_loss(q_dense, k_dense, dense_correspondence(f_q, f_k), dense_queue, temperature)
    return global_term, dense_term


def densecl_loss(
    q: Tensor,
    k: Tensor,
    q_dense: Tensor,
    k_dense: Tensor,
    f_q: Tensor,
    f_k: Tensor,
    queue: Tensor,
    dense_queue: Tensor,
    temperature: float = 0.2,
    dense_weight: float = 0.5,
) -> Tensor:
    """DenseCL loss ``(1 - lambda) * global InfoNCE + lambda * dense InfoNCE``.

    Args:
        q: (B, P) global projection of the query view.
        k: (B, P) global projection of the key view (momentum encoder, detached).
        q_dense: (B, P, h, w) or (B, P, S) dense projection of the query view.
        k_dense: (B, P, h', w') or (B, P, S') dense projection of the key view (detached).
        f_q: (B, C, h, w) or (B, C, S) backbone feature map of the query view (for the correspondence).
        f_k: (B, C, h', w') or (B, C, S') backbone feature map of the key view.
        queue: (K, P) global keys of earlier batches (negatives of the global term).
        dense_queue: (K', P) pooled dense keys of earlier batches (negatives of the dense term).
        temperature: Softmax temperature tau > 0 (the paper: 0.2).
        dense_weight: lambda in [0, 1] (the paper: 0.5).

    Returns:
        Scalar loss.
    """
    check_dense_weight(dense_weight)
    global_term, dense_term = densecl_terms(q, k, q_dense, k_dense, f_q, f_k, queue, dense_queue, temperature)
    return (1 - dense_weight) * global_term + dense_weight * dense_term
