"""Barlow Twins' redundancy-reduction loss (Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction", ICML 2021, eq. 1-2 and alg. 1).

    z_a, z_b: (B, D) embeddings of two views; N = the global batch (all processes)
    z' = (z - mean_N(z)) / sqrt(var_N(z) + eps)        standardize every dimension over the batch
    C = z_a'^T z_b' / N                                 (D, D) cross-correlation, C_ij in [-1, 1]
    loss = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2

The variance is the biased one with eps = 1e-5, as the reference's ``BatchNorm1d(affine=False)``. Under DDP
mean, variance and C are taken over the global batch: their sums are all-reduced with gradients
(``all_reduce_sum``), so each process holds the global loss and DDP's averaging yields its exact gradient (the
reference's in-place ``all_reduce(c)`` has no backward, which scales its gradient by 1 / world size).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_ssl.losses._utils import full_precision
from lightning_ssl.modules.distributed import all_reduce_sum


def default_lambda(dim: int) -> float:
    """lambda = 5e-3 at D = 8192 (the paper's projector) scaled by 1/D: lambda * D stays 40.96, so the weight of a
    row's D - 1 off-diagonal terms against its diagonal term does not change with the projector's width."""
    return 5e-3 * 8192 / dim


def _check_lambda(lambda_offdiag: float) -> None:
    if not lambda_offdiag > 0:
        raise ValueError(f"lambda_offdiag must be > 0, got {lambda_offdiag}")


def cross_correlation(z_a: Tensor, z_b: Tensor, eps: float = 1e-5, gather_distributed: bool = True) -> Tensor:
    """(D, D) cross-correlation of the batch-standardized ``z_a``, ``z_b`` (B, D) over the global batch."""
    reduce = all_reduce_sum if gather_distributed else (lambda t: t)
    n = reduce(z_a.new_tensor(float(len(z_a))))

    def standardize(z: Tensor) -> Tensor:
        z = z - reduce(z.sum(0)) / n
        return z / (reduce(z.pow(2).sum(0)) / n + eps).sqrt()

    return reduce(standardize(z_a).T @ standardize(z_b)) / n


@full_precision
def barlow_twins_loss(
    z_a: Tensor, z_b: Tensor, lambda_offdiag: float | None = None, eps: float = 1e-5, gather_distributed: bool = True
) -> Tensor:
    """Barlow Twins loss of two views' embeddings (B, D); ``lambda_offdiag`` None: ``default_lambda(D)``."""
    if z_a.shape != z_b.shape or z_a.ndim != 2:
        raise ValueError(
            f"the two views must be (B, D) of the same shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}"
        )
    lam = default_lambda(z_a.shape[1]) if lambda_offdiag is None else lambda_offdiag
    _check_lambda(lam)
    c = cross_correlation(z_a.float(), z_b.float(), eps, gather_distributed)
    diag = c.diagonal()
    on_diag = (1 - diag).pow(2).sum()
    off_diag = (c - torch.diag(diag)).pow(2).sum()
    return on_diag + lam * off_diag


class BarlowTwinsLoss(nn.Module):
    """``barlow_twins_loss`` as a module: (z_a, z_b) of shape (B, D) -> scalar.

    Args:
        lambda_offdiag: Weight of the off-diagonal (redundancy-reduction) term, >= 0; None: 5e-3 * 8192 / D (the
            paper's 5e-3 at D = 8192, scaled to the width).
        eps: Added to the per-dimension std before standardizing, for stability (1e-5 in the reference's
            BatchNorm).
        gather_distributed: Under DDP, compute the loss over the global batch (embeddings gathered from every
            process with gradients); a no-op on one process.
    """

    def __init__(self, lambda_offdiag: float | None = None, eps: float = 1e-5, gather_distributed: bool = True) -> None:
        super().__init__()
        if lambda_offdiag is not None:
            _check_lambda(lambda_offdiag)
        self.lambda_offdiag, self.eps, self.gather_distributed = lambda_offdiag, eps, gather_distributed

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        return barlow_twins_loss(z_a, z_b, self.lambda_offdiag, self.eps, self.gather_distributed)
