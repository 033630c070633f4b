"""Patches and masks for masked image modelling (MAE, iBOT).

Shapes: images (B, C, H, W); patch size p; grid h = H / p, w = W / p; N = h * w patches, each flattened to
p * p * C values in (row, column, channel) order, as in the MAE reference code (``models_mae.py``).

- ``patchify`` / ``unpatchify``: (B, C, H, W) <-> (B, N, p*p*C).
- ``random_masking``: MAE's per-sample random masking (He et al., 2021, sec. 3): shuffle the patch indices by
  argsort of uniform noise, keep the first ``N * (1 - ratio)``; ``ids_restore`` is the inverse permutation, so
  ``shuffled.gather(ids_restore)`` puts tokens back in image order.
- ``block_masking``: BEiT/iBOT block-wise masks (Bao et al., 2021, alg. 1): rectangles of random area and
  aspect ratio until about the requested number of patches is masked.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, N, p*p*C) with N = (H/p) * (W/p), patches in row-major order."""
    b, c, hh, ww = images.shape
    p = patch_size
    if hh % p or ww % p:
        raise ValueError(f"image size {hh}x{ww} is not divisible by the patch size {p}")
    h, w = hh // p, ww // p
    x = images.reshape(b, c, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(b, h * w, p * p * c)


def unpatchify(patches: Tensor, patch_size: int, channels: int, grid: tuple[int, int] | None = None) -> Tensor:
    """(B, N, p*p*C) -> (B, C, h*p, w*p); ``grid`` = (h, w), default square."""
    b, n, d = patches.shape
    p = patch_size
    if d != p * p * channels:
        raise ValueError(f"patches of {d} values do not match patch size {p} with {channels} channels")
    h, w = grid if grid is not None else (math.isqrt(n), math.isqrt(n))
    if h * w != n:
        raise ValueError(f"{n} patches do not form a {h}x{w} grid; pass grid=(h, w)")
    x = patches.reshape(b, h, w, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(b, channels, h * p, w * p)


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """Patches left visible by ``random_masking``: ``int(N * (1 - ratio))`` as in MAE, at least one."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must lie in [0, 1), got {mask_ratio}")
    return max(1, int(num_patches * (1 - mask_ratio)))


def random_masking(
    batch_size: int,
    num_patches: int,
    mask_ratio: float,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample random masking.

    Returns:
        ids_keep (B, K): indices of the visible patches (K = ``num_kept(N, ratio)``), in shuffled order;
        mask (B, N): 1.0 for masked patches, 0.0 for visible ones, in image order;
        ids_restore (B, N): inverse of the shuffle; ``x_shuffled.gather(1, ids_restore)`` undoes it.
    """
    keep = num_kept(num_patches, mask_ratio)
    noise = torch.rand(batch_size, num_patches, device=device, generator=generator)
    ids_shuffle = noise.argsort(dim=1)  # ascending: small noise is kept
    ids_restore = ids_shuffle.argsort(dim=1)
    ids_keep = ids_shuffle[:, :keep]
    mask = torch.ones(batch_size, num_patches, device=device)
    mask[:, :keep] = 0
    mask = mask.gather(1, ids_restore)
    return ids_keep, mask, ids_restore


def gather_tokens(x: Tensor, ids: Tensor) -> Tensor:
    """Pick tokens: x (B, N, D), ids (B, K) -> (B, K, D)."""
    return x.gather(1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def block_masking(
    batch_size: int,
    grid: tuple[int, int],
    ratio: tuple[float, float] = (0.1, 0.5),
    probability: float = 0.5,
    min_block: int = 4,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Block-wise masks for iBOT / DINOv2: (B, h*w) bool, True = masked.

    A fraction ``probability`` of the samples is masked (the rest get an empty mask, as in DINOv2); their
    target ratios are spread evenly over ``ratio`` and each mask is grown from random rectangles of at least
    ``min_block`` patches and aspect ratio in ``aspect`` (BEiT, alg. 1), so it holds at most the target number
    of patches (a little less when no rectangle fits the remainder).
    """
    lo, hi = ratio
    if not 0.0 <= lo <= hi < 1.0:
        raise ValueError(f"mask ratio range must satisfy 0 <= min <= max < 1, got {ratio}")
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"mask probability must lie in [0, 1], got {probability}")
    h, w = grid
    masks = torch.zeros(batch_size, h, w, dtype=torch.bool)
    n_masked = int(round(batch_size * probability))
    targets = torch.linspace(lo, hi, n_masked + 1)[1:] if n_masked else torch.empty(0)
    order = torch.randperm(batch_size, generator=generator)[:n_masked]  # which samples get a mask

    def uniform(a: float, b: float) -> float:
        return a + (b - a) * torch.rand((), generator=generator).item()

    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    for i, t in zip(order.tolist(), targets.tolist()):
        target = int(t * h * w)
        mask, count = masks[i], 0
        while count < target:
            added = 0
            for _ in range(10):  # a few tries to place a rectangle that adds patches without overshooting
                area = uniform(min(min_block, target - count), target - count)
                ar = math.exp(uniform(*log_aspect))
                bh, bw = int(round(math.sqrt(area * ar))), int(round(math.sqrt(area / ar)))
                if 0 < bh <= h and 0 < bw <= w:
                    top = int(torch.randint(0, h - bh + 1, (), generator=generator))
                    left = int(torch.randint(0, w - bw + 1, (), generator=generator))
                    new = bh * bw - int(mask[top : top + bh, left : left + bw].sum())
                    if 0 < new <= target - count:
                        mask[top : top + bh, left : left + bw] = True
                        added = new
                        break
            if added == 0:
                break
            count += added
    return masks.flatten(1)
