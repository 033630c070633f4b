"""VICReg's loss: Variance-Invariance-Covariance Regularization (Bardes, Ponce & LeCun, ICLR 2022, sec. 3 and alg. 1).

    z_a, z_b: (B, D) embeddings of two views; N = the global batch (all processes)
    invariance  s = mean over B and D of (z_a - z_b)^2                           (MSE)
    variance    v(z) = mean_j max(0, gamma - sqrt(Var_N(z_j) + eps))            gamma = 1, eps = 1e-4
    covariance  c(z) = sum_{i != j} Cov_N(z)_ij^2 / D                            Cov with 1 / (N - 1)
    loss = 25 * s + 25 * (v(z_a) + v(z_b)) / 2 + 1 * (c(z_a) + c(z_b))

The variance and covariance terms are over the global batch: the embeddings of all processes are gathered with
gradients (``gather``, the reference's ``FullGatherLayer``: all-gather forward, all-reduce + own slice backward);
the invariance term is a mean over local rows, averaged over processes by DDP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ssl.losses._utils import full_precision
from lightning_ssl.modules.distributed import gather


def _check(sim_weight: float, var_weight: float, cov_weight: float, gamma: float, eps: float) -> None:
    for name, v in (("sim_weight", sim_weight), ("var_weight", var_weight), ("cov_weight", cov_weight)):
        if v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
    if not gamma > 0 or not eps > 0:
        raise ValueError(f"gamma and eps must be > 0, got gamma {gamma}, eps {eps}")


def variance_term(z: Tensor, gamma: float = 1.0, eps: float = 1e-4) -> Tensor:
    """Hinge on the standard deviation of every dimension of z (N, D): mean_j relu(gamma - std_j)."""
    std = (z.var(dim=0) + eps).sqrt()
    return F.relu(gamma - std).mean()


def covariance_term(z: Tensor) -> Tensor:
    """Sum of the squared off-diagonal entries of z's (D, D) covariance matrix, divided by D."""
    n, d = z.shape
    z = z - z.mean(dim=0)
    cov = z.T @ z / (n - 1)
    return (cov - torch.diag(cov.diagonal())).pow(2).sum() / d


@full_precision
def vicreg_terms(
    z_a: Tensor, z_b: Tensor, gamma: float = 1.0, eps: float = 1e-4, gather_distributed: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """(invariance, variance, covariance) terms, unweighted: variance averaged and covariance summed over the views."""
    if z_a.shape != z_b.shape or z_a.ndim != 2:
        raise ValueError(
            f"the two views must be (B, D) of the same shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}"
        )
    z_a, z_b = z_a.float(), z_b.float()
    invariance = F.mse_loss(z_a, z_b)
    if gather_distributed:
        z_a, z_b = gather(z_a), gather(z_b)
    if len(z_a) < 2:
        raise ValueError("VICReg's variance and covariance need at least 2 samples in the (global) batch")
    variance = (variance_term(z_a, gamma, eps) + variance_term(z_b, gamma, eps)) / 2
    covariance = covariance_term(z_a) + covariance_term(z_b)
    return invariance, variance, covariance


def vicreg_loss(
    z_a: Tensor,
    z_b: Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
    gather_distributed: bool = True,
) -> Tensor:
    """VICReg loss of two views' embeddings (B, D), with the paper's weights 25 / 25 / 1 by default."""
    _check(sim_weight, var_weight, cov_weight, gamma, eps)
    s, v, c = vicreg_terms(z_a, z_b, gamma, eps, gather_distributed)
    return sim_weight * s + var_weight * v + cov_weight * c


class VICRegLoss(nn.Module):
    """``vicreg_loss`` as a module: the two views' embeddings (B, D) -> scalar.

    Args:
        sim_weight: Weight lambda of the invariance (MSE) term (25 in the paper).
        var_weight: Weight mu of the variance hinge (25 in the paper).
        cov_weight: Weight nu of the covariance term (1 in the paper).
        gamma: Target std of every dimension in the variance hinge (1 in the paper).
        eps: Added to the variance before the square root (1e-4 in the paper).
        gather_distributed: Under DDP, compute variance and covariance over the global batch (embeddings gathered
            with gradients); a no-op on one process.
    """

    def __init__(
        self,
        sim_weight: float = 25.0,
        var_weight: float = 25.0,
        cov_weight: float = 1.0,
        gamma: float = 1.0,
        eps: float = 1e-4,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        _check(sim_weight, var_weight, cov_weight, gamma, eps)
        self.sim_weight, self.var_weight, self.cov_weight = sim_weight, var_weight, cov_weight
        self.gamma, self.eps, self.gather_distributed = gamma, eps, gather_distributed

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        return vicreg_loss(
            z_a, z_b, self.sim_weight, self.var_weight, self.cov_weight, self.gamma, self.eps, self.gather_distributed
        )
