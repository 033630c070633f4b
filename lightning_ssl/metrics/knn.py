"""Weighted k-nearest-neighbour classification on frozen features (Wu et al., 2018; as used by DINO):
cosine similarity, the k most similar bank items vote for their label with weight exp(sim / T)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def knn_predict(
    features: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> Tensor:
    """Class scores (N, num_classes) for ``features`` (N, D) against ``bank`` (M, D) with labels (M,)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if bank_labels.min() < 0 or bank_labels.max() >= num_classes:
        raise ValueError(
            f"bank labels must lie in [0, {num_classes}), got [{int(bank_labels.min())}, {int(bank_labels.max())}]"
        )
    k = min(k, bank.shape[0])
    bank = F.normalize(bank.float(), dim=1)
    scores = []
    for chunk in F.normalize(features.float(), dim=1).split(chunk_size):
        sim, idx = (chunk @ bank.T).topk(k, dim=1)  # (n, k)
        weights = (sim / temperature).exp()
        votes = torch.zeros(chunk.shape[0], num_classes, device=chunk.device)
        votes.scatter_add_(1, bank_labels[idx], weights)
        scores.append(votes)
    return torch.cat(scores)


@torch.no_grad()
def knn_accuracy(
    features: Tensor,
    labels: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int | None = None,
    k: int | Sequence[int] = 200,
    temperature: float = 0.07,
) -> dict[int, float]:
    """Top-1 accuracy (in [0, 1]) of the weighted kNN classifier, for one or several k.

    Args:
        features: Features of the images to classify (N, D).
        labels: Their labels (N,).
        bank: Features of the labelled bank (M, D), e.g. the training set's.
        bank_labels: The bank's labels (M,).
        num_classes: Classes; None: the largest label + 1.
        k: Neighbours voting, one int or several (20 and 200 in DINO's protocol).
        temperature: Temperature of the cosine-similarity-weighted votes, > 0 (0.07 in DINO's protocol).

    Returns:
        ``{k: accuracy}`` for every k.

    Example:
        >>> import torch
        >>> bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> queries = torch.tensor([[1.0, 0.2], [0.2, 1.0]])
        >>> knn_accuracy(queries, torch.tensor([0, 1]), bank, torch.tensor([0, 0, 1, 1]), k=2)
        {2: 1.0}
    """
    num_classes = num_classes or int(max(labels.max(), bank_labels.max())) + 1
    ks = [k] if isinstance(k, int) else list(k)
    out = {}
    for kk in ks:
        pred = knn_predict(features, bank, bank_labels, num_classes, kk, temperature).argmax(1)
        out[kk] = (pred == labels).float().mean().item()
    return out
