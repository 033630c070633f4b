"""LeJEPA's loss (Balestriero & LeCun, "LeJEPA: Provable and Scalable Self-Supervised Learning Without the
Heuristics", 2025, alg. 1; code: rbalestr-lab/lejepa, MINIMAL.md).

    z: (V, N, K) projections of V views of N images; the first G views are the global (full-size) crops
    mu = mean_{v < G} z_v                                  the target: the global views' mean embedding
    prediction = mean over v, n, k of (mu - z_v)^2         every view, global and local, predicts mu
    loss = (1 - lambda) * prediction + lambda * SIGReg(z)  SIGReg over every view (losses/sigreg.py)

No stop-gradient: mu is computed by the same network and receives gradients, as in the reference
(``(proj.mean(0) - proj).square().mean()`` with all views global). Two mistakes other libraries shipped and later
fixed are excluded by construction and tested: leaving the global views out of SIGReg and of the prediction term,
and weighting the terms as ``prediction + lambda * SIGReg`` (then published values of lambda do not transfer).
The prediction term is a mean over this process's rows (DDP averages it over processes); SIGReg is global.
"""

from __future__ import annotations

from torch import Tensor

from lightning_ssl.losses._utils import full_precision
from lightning_ssl.losses.sigreg import sigreg_loss


def check_lambda(lambda_sigreg: float) -> None:
    """Refuse a SIGReg weight outside [0, 1] (the loss is a convex combination of the two terms)."""
    if not 0.0 <= lambda_sigreg <= 1.0:
        raise ValueError(
            f"lambda_sigreg must lie in [0, 1] (loss = (1 - lambda) * prediction + lambda * SIGReg), got "
            f"{lambda_sigreg}; the paper uses 0.05"
        )


@full_precision
def lejepa_prediction_loss(z: Tensor, num_global: int) -> Tensor:
    """Mean squared distance of every view's projection to the mean of the global views' projections.

    Args:
        z: (V, N, K) projections of V views of N images, the global views first.
        num_global: Number G of global views (1 <= G <= V).

    Returns:
        Scalar ``mean_{v, n, k} (mean_{g < G} z_g - z_v)^2``.
    """
    if z.ndim != 3:
        raise ValueError(f"LeJEPA needs projections of shape (V, N, K), got {tuple(z.shape)}")
    if not 1 <= num_global <= z.shape[0]:
        raise ValueError(f"num_global must lie in [1, {z.shape[0]}] (the number of views), got {num_global}")
    z = z.float()
    return (z[:num_global].mean(0) - z).pow(2).mean()


def lejepa_loss(
    z: Tensor,
    num_global: int,
    directions: Tensor,
    lambda_sigreg: float = 0.05,
    per_view: bool = True,
    t_max: float = 3.0,
    knots: int = 17,
    gather_distributed: bool = True,
) -> Tensor:
    """LeJEPA's loss ``(1 - lambda) * prediction + lambda * SIGReg``.

    Args:
        z: (V, N, K) projections of V views of N images, the global views first.
        num_global: Number G of global views, whose mean is the target.
        directions: (K, M) unit directions of SIGReg's slices (``losses.sigreg.random_directions``).
        lambda_sigreg: Weight of SIGReg in [0, 1] (the paper: 0.05).
        per_view: SIGReg per view, averaged (the paper), or of all views flattened into one sample.
        t_max: End of the Epps-Pulley integration interval (reference: 3).
        knots: Integration points on [0, t_max] (reference: 17).
        gather_distributed: SIGReg over the global batch under DDP, with exact gradients.

    Returns:
        Scalar loss.
    """
    check_lambda(lambda_sigreg)
    prediction = lejepa_prediction_loss(z, num_global)
    sigreg = sigreg_loss(z, directions, t_max, knots, per_view, gather_distributed)
    return (1 - lambda_sigreg) * prediction + lambda_sigreg * sigreg
