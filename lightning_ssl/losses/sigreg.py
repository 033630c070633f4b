"""SIGReg: Sketched Isotropic Gaussian Regularization (Balestriero & LeCun, "LeJEPA: Provable and Scalable
Self-Supervised Learning Without the Heuristics", 2025, sec. 4 and alg. 1; code: rbalestr-lab/lejepa).

    z: (V, N, D) embeddings of V views of N images (N: the global batch, all processes)
    a_1 .. a_M: M random unit directions of R^D (slices), fresh every step, the same on every process
    x = z a_m                                                          the 1-D projections of one slice
    ecf(t) = mean_n exp(i t x_n) = mean_n cos(t x_n) + i mean_n sin(t x_n)      empirical characteristic function
    EP = N * integral |ecf(t) - exp(-t^2 / 2)|^2 exp(-t^2 / 2) dt                Epps-Pulley statistic vs N(0, 1)
    SIGReg = the mean of EP over the slices (and the views)

The integral over [-t_max, t_max] is the trapezoid rule on ``knots`` points of [0, t_max] with doubled weights
(the integrand is even in t), as ``EppsPulley`` in lejepa/univariate/epps_pulley.py (t_max = 3, 17 knots).
``per_view=True`` (the paper's alg. 1 and the reference's minimal example) tests each view's N embeddings on its
own and averages over the views; ``per_view=False`` flattens the V * N embeddings into one sample, which then also
measures the spread of an image's views, and whose statistic grows with V (its N is V * N).

Under DDP the characteristic function is a mean over the global batch: the per-process sums of cos and sin (and
the sample count) are all-reduced, the sums with gradients (``all_reduce_sum``), so every process holds the global
statistic and DDP's gradient averaging gives its exact gradient. The directions come from a generator seeded by a
call counter, as the reference seeds them by its step counter: the same on every process without communication.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_ssl.losses._utils import full_precision
from lightning_ssl.modules.distributed import all_reduce_sum


def _check(t_max: float, knots: int, num_slices: int = 1) -> None:
    if not t_max > 0:
        raise ValueError(f"t_max (the end of the integration interval) must be > 0, got {t_max}")
    if knots < 2:
        raise ValueError(f"knots (integration points) must be >= 2, got {knots}")
    if num_slices < 1:
        raise ValueError(f"num_slices (random projections) must be >= 1, got {num_slices}")


def random_directions(dim: int, num_slices: int, generator: torch.Generator | None = None) -> Tensor:
    """``num_slices`` directions drawn uniformly on the unit sphere of R^dim (normalized Gaussian vectors).

    Args:
        dim: Dimension D of the embeddings.
        num_slices: Number M of directions.
        generator: CPU generator to draw from (seed it for reproducible directions); None uses the global one.

    Returns:
        (D, M) float32 tensor on the CPU whose columns have unit norm.
    """
    a = torch.randn(dim, num_slices, generator=generator)
    return a / a.norm(dim=0, keepdim=True)


@full_precision
def epps_pulley(x: Tensor, t_max: float = 3.0, knots: int = 17, gather_distributed: bool = True) -> Tensor:
    """Epps-Pulley statistic of every column of ``x`` against the standard normal distribution.

    Args:
        x: (..., N, M) samples: M one-dimensional samples of N values each (this process's share).
        t_max: End of the integration interval [-t_max, t_max] (the reference's 3).
        knots: Integration points on [0, t_max] (the reference's 17).
        gather_distributed: Take the empirical characteristic function over the samples of all processes.

    Returns:
        (..., M) statistics ``N * integral |ecf - phi|^2 phi dt``, N the global number of samples.
    """
    _check(t_max, knots)
    t = torch.linspace(0, t_max, knots, device=x.device)
    phi = torch.exp(-0.5 * t**2)  # the N(0, 1) characteristic function, also the integration window
    weights = torch.full_like(t, 2 * t_max / (knots - 1))  # trapezoid on [0, t_max], doubled for [-t_max, 0]
    weights[[0, -1]] = t_max / (knots - 1)
    reduce = all_reduce_sum if gather_distributed else (lambda v: v)
    n = reduce(torch.tensor(float(x.shape[-2]), device=x.device))
    xt = x.float().unsqueeze(-1) * t  # (..., N, M, knots)
    cos_mean = reduce(xt.cos().sum(-3)) / n  # (..., M, knots)
    sin_mean = reduce(xt.sin().sum(-3)) / n
    err = (cos_mean - phi) ** 2 + sin_mean**2
    return (err @ (weights * phi)) * n


@full_precision
def sigreg_loss(
    z: Tensor,
    directions: Tensor,
    t_max: float = 3.0,
    knots: int = 17,
    per_view: bool = True,
    gather_distributed: bool = True,
) -> Tensor:
    """SIGReg of embeddings ``z``: the Epps-Pulley statistic of their projections on ``directions``, averaged.

    Args:
        z: (V, N, D) embeddings of V views of N images, or (N, D) for one view.
        directions: (D, M) unit directions (``random_directions``), the same on every process.
        t_max: End of the integration interval of the Epps-Pulley statistic.
        knots: Integration points on [0, t_max].
        per_view: One statistic per view, averaged over the views (the paper); False: one statistic of the V * N
            embeddings flattened into one sample.
        gather_distributed: Statistics over the global batch (all processes), with exact gradients.

    Returns:
        Scalar: the mean over slices (and views) of the statistics.
    """
    if z.ndim == 2:
        z = z.unsqueeze(0)
    if z.ndim != 3 or directions.ndim != 2 or directions.shape[0] != z.shape[-1]:
        raise ValueError(
            f"SIGReg needs embeddings (V, N, D) and directions (D, M), got {tuple(z.shape)} and "
            f"{tuple(directions.shape)}"
        )
    if not per_view:
        z = z.reshape(1, -1, z.shape[-1])
    x = z.float() @ directions.to(device=z.device, dtype=torch.float32)  # (V, N, M)
    return epps_pulley(x, t_max, knots, gather_distributed).mean()


class SIGReg(nn.Module):
    """SIGReg with fresh random directions at every call (``sigreg_loss``).

    The directions come from a CPU generator seeded with ``(seed, calls)``, ``calls`` being a buffer that counts
    the calls: every process draws the same directions, every step new ones, and a run resumed from a checkpoint
    continues the same sequence.

    Args:
        num_slices: Random directions M per call (the reference's minimal example: 256; its README: 1024).
        t_max: End of the integration interval [-t_max, t_max] of the Epps-Pulley statistic (reference: 3).
        knots: Integration points on [0, t_max] (reference: 17).
        per_view: Test each view on its own and average (the paper); False: the views flattened into one sample.
        seed: Seed of the directions' generator, in [0, 2**31).
        gather_distributed: Statistics over the global batch under DDP, with exact gradients.
    """

    calls: Tensor  # () long: calls so far

    def __init__(
        self,
        num_slices: int = 256,
        t_max: float = 3.0,
        knots: int = 17,
        per_view: bool = True,
        seed: int = 0,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        _check(t_max, knots, num_slices)
        if not 0 <= seed < 2**31:
            raise ValueError(f"seed must lie in [0, 2**31), got {seed}")
        self.num_slices, self.t_max, self.knots, self.per_view = num_slices, t_max, knots, per_view
        self.seed, self.gather_distributed = seed, gather_distributed
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def directions(self, dim: int) -> Tensor:
        """The (dim, num_slices) directions of the next call (without counting it)."""
        # the generator keeps 32 bits of its seed: mix (seed, calls) into them (seed 0: the reference's seed, the step)
        generator = torch.Generator().manual_seed((self.seed * 0x9E3779B1 + int(self.calls)) % 2**32)
        return random_directions(dim, self.num_slices, generator)

    def forward(self, z: Tensor) -> Tensor:
        """SIGReg of ``z`` (V, N, D) or (N, D) on this call's directions; advances the call counter."""
        directions = self.directions(z.shape[-1])
        self.calls += 1
        return sigreg_loss(z, directions, self.t_max, self.knots, self.per_view, self.gather_distributed)
