"""Negative cosine similarity losses for non-contrastive methods (no negatives; the target is detached).

- BYOL (Grill et al., 2020, eq. 2): ``2 - 2 cos(p, z')``, z' from the target network.
- SimSiam (Chen & He, 2021, eq. 1): ``-cos(p, stopgrad(z))``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ssl.losses._utils import full_precision


@full_precision
def negative_cosine_similarity(p: Tensor, z: Tensor) -> Tensor:
    """Mean over the batch of ``-cos(p_i, z_i)`` with ``z`` detached (stop-gradient)."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=-1).mean()


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's normalized MSE, ``||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z)``, averaged over the batch."""
    return 2 + 2 * negative_cosine_similarity(p, z)


class NegativeCosineSimilarity(nn.Module):
    """``negative_cosine_similarity`` as a module: p, z (B, D) -> scalar; no constructor arguments."""

    def forward(self, p: Tensor, z: Tensor) -> Tensor:
        return negative_cosine_similarity(p, z)
