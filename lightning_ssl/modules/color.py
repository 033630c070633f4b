"""Colour spaces and the quantized ab space of colorization (Zhang, Isola & Efros, "Colorful Image Colorization",
ECCV 2016), on batched tensors.

* ``rgb_to_lab`` / ``lab_to_rgb``: sRGB in [0, 1] <-> CIE Lab (D65), (B, 3, H, W) on any device. They are
  kornia's conversions, run in float32 outside autocast (in bf16 they would be off by up to ~0.6 Lab units);
  the tests check them against scikit-image's ``rgb2lab`` / ``lab2rgb``. L lies in [0, 100], a in [-86, 98],
  b in [-108, 94].
* ``ab_bins``: centres of the ``grid``-unit cells of the ab plane that some sRGB colour falls into
  (261 for a 10-unit grid; the paper's 313 came from a looser in-gamut test, the recipe is the same).
* ``encode_ab`` (hard or soft: Gaussian over the 5 nearest bins, sigma 5), ``rebalance_weights`` (eq. 3-4:
  w ∝ ((1 - λ) p̃ + λ / Q)^-1 with p̃ the Gaussian-smoothed empirical distribution, E_p̃[w] = 1) and
  ``decode_ab`` (the annealed mean, T = 0.38).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

L_MAX, AB_SCALE = 100.0, 110.0  # ranges used to scale L and ab to about [-1, 1] for the networks


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB in [0, 1] (B, 3, H, W) -> Lab (B, 3, H, W), float32 (float64 stays float64)."""
    import kornia.color

    _check_rgb(rgb)
    dtype = torch.float64 if rgb.dtype == torch.float64 else torch.float32
    with torch.autocast(rgb.device.type, enabled=False):
        return kornia.color.rgb_to_lab(rgb.to(dtype).clamp(0, 1))


def lab_to_rgb(lab: Tensor) -> Tensor:
    """Lab (B, 3, H, W) -> sRGB (B, 3, H, W) clipped to [0, 1] (ab outside the gamut is clipped per channel)."""
    import kornia.color

    _check_rgb(lab)
    dtype = torch.float64 if lab.dtype == torch.float64 else torch.float32
    with torch.autocast(lab.device.type, enabled=False):
        return kornia.color.lab_to_rgb(lab.to(dtype), clip=True)


def _check_rgb(x: Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected colour images (B, 3, H, W), got shape {tuple(x.shape)}")


@functools.lru_cache(maxsize=4)
def _ab_bins(grid: float, steps: int) -> Tensor:
    g = torch.linspace(0, 1, steps)
    rgb = torch.stack(torch.meshgrid(g, g, g, indexing="ij")).reshape(1, 3, -1, 1)  # every colour of a dense grid
    ab = rgb_to_lab(rgb)[0, 1:, :, 0].T  # (steps^3, 2)
    cells = torch.unique(torch.round(ab / grid), dim=0)  # sorted, so the bin order is fixed
    return cells * grid


def ab_bins(grid: float = 10.0, steps: int = 64) -> Tensor:
    """In-gamut ab bin centres (Q, 2): the cells of a ``grid``-unit lattice (centres at multiples of ``grid``)
    that some sRGB colour of a ``steps`` x ``steps`` x ``steps`` grid falls into. Deterministic; about 0.4 s the
    first time."""
    if grid <= 0:
        raise ValueError(f"grid must be > 0, got {grid}")
    return _ab_bins(float(grid), steps).clone()


def _sq_dist(ab: Tensor, bins: Tensor) -> Tensor:
    """ab (B, 2, H, W), bins (Q, 2) -> squared distances (B, H, W, Q)."""
    x, b = ab.permute(0, 2, 3, 1).float(), bins.float().to(ab.device)
    # |x - b|^2 expanded: a (B, H, W, Q) matmul instead of a (B, H, W, Q, 2) difference tensor
    return ((x**2).sum(-1, keepdim=True) - 2 * x @ b.T + (b**2).sum(-1)).clamp_min(0)


def encode_ab(ab: Tensor, bins: Tensor, soft: bool = False, neighbors: int = 5, sigma: float = 5.0) -> Tensor:
    """Quantize ab (B, 2, H, W).

    Hard: index of the nearest bin, (B, H, W) long. Soft (the paper's target, sec. 2.1): a distribution
    (B, Q, H, W) over the ``neighbors`` nearest bins with Gaussian weights of width ``sigma``.
    """
    d2 = _sq_dist(ab, bins)
    if not soft:
        return d2.argmin(-1)
    near_d2, near = d2.topk(neighbors, dim=-1, largest=False)  # (B, H, W, k)
    w = torch.softmax(-near_d2 / (2 * sigma**2), dim=-1)  # normalized Gaussian weights
    return torch.zeros_like(d2).scatter_(-1, near, w).permute(0, 3, 1, 2)


def rebalance_weights(counts: Tensor, bins: Tensor, lam: float = 0.5, sigma: float = 5.0) -> Tensor:
    """Class-rebalancing weights (Q,) from bin counts (Q,) (eq. 3-4): smooth the empirical distribution with a
    Gaussian of width ``sigma`` in ab space, mix with the uniform distribution (weight ``lam``), invert, and
    scale so that the expected weight under the smoothed distribution is 1. Rare (saturated) colours get
    large weights, the frequent greyish ones small weights."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {lam}")
    q = len(bins)
    p = counts.double() / counts.sum().clamp_min(1)
    kernel = torch.exp(-(torch.cdist(bins.double(), bins.double()) ** 2) / (2 * sigma**2))
    p_smooth = kernel @ p
    p_smooth = p_smooth / p_smooth.sum().clamp_min(1e-12)
    w = 1.0 / ((1 - lam) * p_smooth + lam / q)
    return (w / (p_smooth * w).sum()).float()


def decode_ab(logits: Tensor, bins: Tensor, temperature: float = 0.38) -> Tensor:
    """Annealed mean (sec. 2.2): logits (B, Q, H, W) -> ab (B, 2, H, W). T = 1 is the mean (desaturated),
    T -> 0 the mode (spatially inconsistent); T = 0.38 is the paper's compromise."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    p = F.softmax(logits.float() / temperature, dim=1)
    return torch.einsum("bqhw,qc->bchw", p, bins.float().to(p.device))
