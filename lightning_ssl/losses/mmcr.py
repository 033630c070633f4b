"""MMCR's loss: Maximum Manifold Capacity Representations (Yerxa, Kuang, Simoncelli & Chung, "Efficient Coding of
Natural Images using Maximum Manifold Capacity Representations", NeurIPS 2023, eq. 3-4; code: ThomasYerxa/mmcr).

    z: (V, N, D) projections of V views of N images; N: the global batch (all processes)
    z <- z / ||z||                                   every view on the unit sphere
    c_n = mean_v z_vn                                 the centroid of image n's views, C = [c_1 .. c_N] (N, D)
    loss = -||C||_*  +  lambda * mean_n ||Z_n||_*     ||.||_*: nuclear norm (sum of singular values),
                                                      Z_n = (V, D) matrix of image n's views
Maximizing the nuclear norm of the centroid matrix spreads the centroids over many dimensions (high rank) and
pushes them to the sphere (long centroids = views that agree); the optional local term (lambda = 0 in the paper's
main experiments) shrinks each image's view manifold directly.

Under DDP the centroid matrix is the global batch's: the centroids are gathered with gradients (``gather``), so
the nuclear norm equals the single-process one and DDP's averaging gives its exact gradient. (The reference gathers
without gradients, which scales the gradient by 1 / world size.) The local term is a mean over this process's
images, which DDP averages over processes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ssl.losses._utils import full_precision
from lightning_ssl.modules.distributed import gather


def _check(lambda_local: float) -> None:
    if not lambda_local >= 0:
        raise ValueError(f"lambda_local (weight of the per-image nuclear norms) must be >= 0, got {lambda_local}")


@full_precision
def mmcr_terms(z: Tensor, local: bool = True, gather_distributed: bool = True) -> tuple[Tensor, Tensor]:
    """The nuclear norm of the global batch's centroid matrix and the mean nuclear norm of an image's views.

    Args:
        z: (V, N, D) projections of V >= 1 views of N images (this process's images).
        local: Compute the per-image term (a batched SVD of N (V, D) matrices); False returns 0 for it.
        gather_distributed: Centroid matrix over all processes' images, with gradients.

    Returns:
        ``(||C||_*, mean_n ||Z_n||_*)``, two scalars.
    """
    if z.ndim != 3:
        raise ValueError(f"MMCR needs projections of shape (V views, N images, D), got {tuple(z.shape)}")
    z = F.normalize(z.float(), dim=-1)
    centroids = z.mean(0)  # (N, D)
    if gather_distributed:
        centroids = gather(centroids)  # (N_global, D)
    global_nuc = torch.linalg.svdvals(centroids).sum()
    local_nuc = torch.linalg.svdvals(z.transpose(0, 1)).sum(-1).mean() if local else z.new_zeros(())
    return global_nuc, local_nuc


def mmcr_loss(z: Tensor, lambda_local: float = 0.0, gather_distributed: bool = True) -> Tensor:
    """MMCR loss ``-||C||_* + lambda_local * mean_n ||Z_n||_*``.

    Args:
        z: (V, N, D) projections of V views of N images (normalized here).
        lambda_local: Weight of the per-image nuclear norms, >= 0 (the paper's main setting: 0).
        gather_distributed: Centroid matrix over the global batch under DDP, with exact gradients.

    Returns:
        Scalar loss. With lambda_local = 0 it is >= -sqrt(min(N, D) * N): -N when N <= D and the centroids are
        orthonormal (every image's views identical, the images' embeddings orthogonal).
    """
    _check(lambda_local)
    global_nuc, local_nuc = mmcr_terms(z, lambda_local > 0, gather_distributed)
    return lambda_local * local_nuc - global_nuc


class MMCRLoss(nn.Module):
    """``mmcr_loss`` as a module.

    Args:
        lambda_local: Weight of the per-image nuclear norms, >= 0 (the paper's main setting: 0).
        gather_distributed: Centroid matrix over the global batch under DDP, with exact gradients.
    """

    def __init__(self, lambda_local: float = 0.0, gather_distributed: bool = True) -> None:
        super().__init__()
        _check(lambda_local)
        self.lambda_local, self.gather_distributed = lambda_local, gather_distributed

    def forward(self, z: Tensor) -> Tensor:
        return mmcr_loss(z, self.lambda_local, self.gather_distributed)
