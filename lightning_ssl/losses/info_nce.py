"""InfoNCE / NT-Xent contrastive losses (pure functions + thin modules).

- ``nt_xent_loss``: SimCLR's loss over 2N views (Chen et al., 2020, eq. 1): every view's positive is the other
  view of the same image, its negatives are the other 2N-2 views.
- ``info_nce_loss``: one-directional InfoNCE (van den Oord et al., 2018) between queries and keys, with the
  positive of query i at key i, negatives from the batch and/or a queue. MoCo v2/v3 and CLIP use it.

Under DDP, keys are gathered from all processes *with gradients* (see ``modules.distributed.gather``) and each
process computes the loss for its own rows only, so memory stays linear in the local batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ssl.losses._utils import full_precision
from lightning_ssl.modules.distributed import gather, rank


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


@full_precision
def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.1, gather_distributed: bool = True) -> Tensor:
    """NT-Xent loss for two views ``z1``, ``z2`` of shape (B, D) (B local rows), averaged over all 2B rows.

    Args:
        z1: Embeddings of the first views (B, D); normalized here.
        z2: Embeddings of the second views (B, D), row i the same image as row i of ``z1``.
        temperature: Softmax temperature tau, > 0 (SimCLR: 0.1 to 0.5).
        gather_distributed: Under DDP, take the negatives from the global batch (gathered with gradients).

    Returns:
        The scalar loss: cross-entropy of each view against its partner, the other 2N - 2 views as negatives.

    Example:
        Views that agree give a loss near 0; views matched to the wrong image a loss near 1/tau:

        >>> import torch
        >>> z = torch.eye(2)
        >>> round(nt_xent_loss(z, z, temperature=0.1).item(), 6)
        9.1e-05
        >>> round(nt_xent_loss(z, z.flip(0), temperature=0.1).item(), 2)
        10.0
    """
    _check_temperature(temperature)
    if z1.shape != z2.shape:
        raise ValueError(f"the two views must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    b = z1.shape[0]
    a1 = gather(z1) if gather_distributed else z1  # (N, D), N = world size * B
    a2 = gather(z2) if gather_distributed else z2
    n = a1.shape[0]
    offset = rank() * b if n != b else 0

    rows = torch.cat([z1, z2])  # (2B, D): this process's views
    cols = torch.cat([a1, a2])  # (2N, D): everyone's views
    logits = rows @ cols.T / temperature  # (2B, 2N)
    idx = torch.arange(b, device=z1.device) + offset
    self_cols = torch.cat([idx, idx + n])  # a view is not its own negative
    logits[torch.arange(2 * b, device=z1.device), self_cols] = float("-inf")
    positives = torch.cat([idx + n, idx])  # view 1 of image i <-> view 2 of image i
    return F.cross_entropy(logits, positives)


@full_precision
def info_nce_loss(
    query: Tensor,
    key: Tensor,
    temperature: float = 0.1,
    negatives: Tensor | None = None,
    in_batch_negatives: bool = True,
    gather_distributed: bool = True,
) -> Tensor:
    """InfoNCE of ``query`` (B, D) against ``key`` (B, D): the positive of query i is key i.

    Negatives are the other keys of the global batch (``in_batch_negatives``, MoCo v3 / CLIP) and/or the rows
    of ``negatives`` (K, D), e.g. MoCo's queue (MoCo v2 uses the queue only: ``in_batch_negatives=False``).
    Inputs are L2-normalized here; pass ``key`` detached for a momentum encoder."""
    _check_temperature(temperature)
    query, key = F.normalize(query.float(), dim=1), F.normalize(key.float(), dim=1)
    b = query.shape[0]
    if not in_batch_negatives:
        if negatives is None:
            raise ValueError("without in-batch negatives, InfoNCE needs explicit negatives")
        pos = (query * key).sum(1, keepdim=True)  # (B, 1)
        neg = query @ F.normalize(negatives.float(), dim=1).T  # (B, K)
        logits = torch.cat([pos, neg], dim=1) / temperature
        return F.cross_entropy(logits, torch.zeros(b, dtype=torch.long, device=query.device))
    keys = gather(key) if gather_distributed else key  # (N, D)
    offset = rank() * b if keys.shape[0] != b else 0
    if negatives is not None:
        keys = torch.cat([keys, F.normalize(negatives.float(), dim=1)])
    logits = query @ keys.T / temperature  # (B, N [+ K])
    return F.cross_entropy(logits, torch.arange(b, device=query.device) + offset)


class NTXentLoss(nn.Module):
    """``nt_xent_loss`` as a module: two views' embeddings (B, D) each -> scalar over the 2B views.

    Args:
        temperature: Softmax temperature tau, > 0 (SimCLR: 0.1 to 0.5).
        gather_distributed: Under DDP, compute the loss over the global batch (embeddings gathered from every
            process with gradients); a no-op on one process.
    """

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = True) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature, self.gather_distributed = temperature, gather_distributed

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return nt_xent_loss(z1, z2, self.temperature, self.gather_distributed)


class InfoNCELoss(nn.Module):
    """``info_nce_loss`` as a module: queries and keys (B, D) -> scalar, the matching key is the positive.

    Args:
        temperature: Softmax temperature tau, > 0 (MoCo v2: 0.2; MoCo v3: 0.2 for ViT, 1.0 for ResNet).
        gather_distributed: Under DDP, compute the loss over the global batch (embeddings gathered from every
            process with gradients); a no-op on one process.
    """

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = True) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature, self.gather_distributed = temperature, gather_distributed

    def forward(
        self, query: Tensor, key: Tensor, negatives: Tensor | None = None, in_batch_negatives: bool = True
    ) -> Tensor:
        return info_nce_loss(query, key, self.temperature, negatives, in_batch_negatives, self.gather_distributed)
