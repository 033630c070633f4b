"""NNCLR's loss: nearest neighbours from a support set as positives (Dwibedi et al., "With a Little Help from My
Friends: Nearest-Neighbor Contrastive Learning of Visual Representations", ICCV 2021, eq. 2 and 4).

    NN(z, Q) = argmax_{q in Q} cos(z, q)                     nearest neighbour in the support set Q (no gradient)
    loss = (InfoNCE(NN(z_1, Q), p_2) + InfoNCE(NN(z_2, Q), p_1)) / 2,   tau = 0.1

where z are the projections, p the predictions, and InfoNCE(a, b) = -log exp(a_i.b_i / tau) / sum_k exp(a_i.b_k / tau)
over the predictions b_k of the global batch (``info_nce_loss``, gathered with gradients under DDP).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_ssl.losses.info_nce import info_nce_loss


@torch.no_grad()
def nearest_neighbours(z: Tensor, support: Tensor) -> Tensor:
    """For each row of ``z`` (B, D) the row of ``support`` (K, D) with the highest cosine similarity: (B, D)."""
    sim = F.normalize(z.float(), dim=1) @ F.normalize(support.float(), dim=1).T  # (B, K)
    return support[sim.argmax(dim=1)]


def nnclr_loss(
    p_1: Tensor, p_2: Tensor, nn_1: Tensor, nn_2: Tensor, temperature: float = 0.1, gather_distributed: bool = True
) -> Tensor:
    """Symmetric NNCLR loss: the neighbour of view 1's projection is the query whose positive is view 2's prediction
    (and the other way round); predictions (B, D), neighbours (B, D), detached here."""
    return (
        info_nce_loss(nn_1.detach(), p_2, temperature, gather_distributed=gather_distributed)
        + info_nce_loss(nn_2.detach(), p_1, temperature, gather_distributed=gather_distributed)
    ) / 2
