"""Patches and masks for masked image modelling (MAE, iBOT).

Shapes: images (B, C, H, W); patch size p; grid h = H / p, w = W / p; N = h * w patches, each flattened to
p * p * C values in (row, column, channel) order, as in the MAE reference code (``models_mae.py``).

- ``patchify`` / ``unpatchify``: (B, C, H, W) <-> (B, N, p*p*C).
- ``random_masking``: MAE's per-sample random masking (He et al., 2021, sec. 3): shuffle the patch indices by
  argsort of uniform noise, keep the first ``N * (1 - ratio)``; ``ids_restore`` is the inverse permutation, so
  ``shuffled.gather(ids_restore)`` puts tokens back in image order.
- ``block_masking``: BEiT/iBOT block-wise masks (Bao et al., 2021, alg. 1): rectangles of random area and
  aspect ratio until about the requested number of patches is masked.
- ``beit_masking``: BEiT's own block-wise masking generator (Bao et al., 2021, alg. 1, ``masking_generator.py``):
  75 of 196 patches at 14x14, blocks of at least 16 patches, counts scaled to other grids.
"""

from __future__ import annotations

import math
from typing import Literal, overload

import numpy as np
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
    n_masked = round(batch_size * probability)
    targets = torch.linspace(lo, hi, n_masked + 1)[1:] if n_masked else torch.empty(0)
    order = torch.randperm(batch_size, generator=generator)[:n_masked]  # which samples get a mask

    def uniform(a: float, b: float) -> float:
        return a + (b - a) * torch.rand((), generator=generator).item()

    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    for i, t in zip(order.tolist(), targets.tolist(), strict=True):
        target = int(t * h * w)
        mask, count = masks[i], 0
        while count < target:
            added = 0
            for _ in range(10):  # a few tries to place a rectangle that adds patches without overshooting
                area = uniform(min(min_block, target - count), target - count)
                ar = math.exp(uniform(*log_aspect))
                bh, bw = round(math.sqrt(area * ar)), round(math.sqrt(area / ar))
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


BEIT_MASKED, BEIT_MIN_BLOCK, BEIT_GRID = 75, 16, 196  # BEiT's counts at 224 px / patch 16 (14 x 14 patches)


@overload
def beit_masking(
    batch_size: int,
    grid: tuple[int, int],
    num_masked: int | None = ...,
    min_block: int | None = ...,
    aspect: tuple[float, float] = ...,
    attempts: int = ...,
    generator: torch.Generator | None = ...,
    return_blocks: Literal[False] = ...,
) -> Tensor: ...


@overload
def beit_masking(
    batch_size: int,
    grid: tuple[int, int],
    num_masked: int | None = ...,
    min_block: int | None = ...,
    aspect: tuple[float, float] = ...,
    attempts: int = ...,
    generator: torch.Generator | None = ...,
    *,
    return_blocks: Literal[True],
) -> tuple[Tensor, list[list[tuple[int, int, int, int]]]]: ...


def beit_masking(
    batch_size: int,
    grid: tuple[int, int],
    num_masked: int | None = None,
    min_block: int | None = None,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    attempts: int = 10,
    generator: torch.Generator | None = None,
    return_blocks: bool = False,
) -> Tensor | tuple[Tensor, list[list[tuple[int, int, int, int]]]]:
    """BEiT's block-wise masks: (B, h*w) bool, True = masked (Bao et al., 2021, algorithm 1).

    Each mask is grown from rectangles until ``num_masked`` patches are masked or no rectangle fits: a rectangle
    has a random area in [``min_block``, patches still to mask] and an aspect ratio h/w log-uniform in
    ``aspect``; it must add at least one new patch and no more than are still to mask (it may overlap the
    mask so far); ``attempts`` tries per rectangle. Defaults follow the paper at 14 x 14 patches (75 masked,
    blocks >= 16) and scale with the number of patches N: ``num_masked = round(75 N / 196)``, ``min_block =
    max(1, round(16 N / 196))``. Unlike the reference code, a rectangle whose rounded sides break the area or
    aspect limits is redrawn, so every block keeps them; no patches are added or removed at random afterwards,
    so a mask is a union of its blocks and may hold a few patches fewer than ``num_masked`` (about 36% of the
    patches are masked on average at 14 x 14, the paper's "around 40%").

    ``return_blocks``: also return, per sample, the rectangles ``(top, left, height, width)`` it was grown from.
    """
    h, w = grid
    n = h * w
    if num_masked is None:
        num_masked = round(BEIT_MASKED * n / BEIT_GRID)
    if min_block is None:
        min_block = max(1, round(BEIT_MIN_BLOCK * n / BEIT_GRID))
    if not 0 < num_masked < n:
        raise ValueError(f"num_masked must lie in [1, {n - 1}] for a {h}x{w} grid, got {num_masked}")
    if not 1 <= min_block <= num_masked:
        raise ValueError(f"min_block must lie in [1, num_masked={num_masked}], got {min_block}")
    lo_aspect, hi_aspect = aspect
    if not 0 < lo_aspect <= hi_aspect:
        raise ValueError(f"aspect ratio range must satisfy 0 < min <= max, got {aspect}")
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    log_lo, log_hi = math.log(lo_aspect), math.log(hi_aspect)
    masks = np.zeros((batch_size, h, w), dtype=bool)  # numpy: cheap slicing in the loop
    all_blocks: list[list[tuple[int, int, int, int]]] = []
    # 4 uniform numbers per attempt (area, aspect ratio, top, left), drawn for a few blocks per sample at once
    per_draw = num_masked // min_block + 2
    draws = torch.rand(batch_size, per_draw, attempts, 4, generator=generator).tolist()
    for i in range(batch_size):
        mask, count, blocks, sample_draws = masks[i], 0, [], draws[i]
        while count < num_masked:
            remaining = num_masked - count
            added = 0
            if not sample_draws:  # overlapping blocks added few patches: more draws
                sample_draws = torch.rand(per_draw, attempts, 4, generator=generator).tolist()
            for u_area, u_aspect, u_top, u_left in sample_draws.pop():
                area = min_block + (max(min_block, remaining) - min_block) * u_area
                ar = math.exp(log_lo + (log_hi - log_lo) * u_aspect)
                bh, bw = round(math.sqrt(area * ar)), round(math.sqrt(area / ar))
                if not (bh * bw >= min_block and 0 < bh <= h and 0 < bw <= w and lo_aspect <= bh / bw <= hi_aspect):
                    continue
                top, left = int(u_top * (h - bh + 1)), int(u_left * (w - bw + 1))
                new = bh * bw - int(mask[top : top + bh, left : left + bw].sum())
                if 0 < new <= remaining:
                    mask[top : top + bh, left : left + bw] = True
                    blocks.append((top, left, bh, bw))
                    added = new
                    break
            if added == 0:
                break
            count += added
        all_blocks.append(blocks)
    flat = torch.from_numpy(masks).flatten(1)
    return (flat, all_blocks) if return_blocks else flat
