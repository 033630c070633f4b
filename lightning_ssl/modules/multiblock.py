"""I-JEPA's multi-block masks (Assran et al., "Self-Supervised Learning from Images with a Joint-Embedding
Predictive Architecture", CVPR 2023, sec. 3 and fig. 4; ``MaskCollator`` in facebookresearch/ijepa).

For a batch on an h x w patch grid:
    target size  (th, tw): one draw per batch, area = scale * h * w with scale ~ U(0.15, 0.2), aspect ~ U(0.75, 1.5)
    context size (ch, cw): one draw per batch, scale ~ U(0.85, 1.0), aspect 1
    per sample:  M = 4 target blocks of the target size at uniform positions (they may overlap each other);
                 one context block of the context size, with every target patch removed from it
The patch indices of each block are listed in raster order. As in the reference collator, every block of the
batch is cut to the smallest count in the batch, so all samples share the number of kept tokens (targets: always
th * tw; context: its smallest size after the target patches are removed). A context block left with fewer than
``min_keep`` patches is redrawn; after 20 failed draws one more target block stops constraining it (reference).

One difference: block positions are uniform over every placement that fits; the reference draws the corner with
``randint(0, h - th)`` (exclusive bound), which never places a block on the last row or column.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _check(scale: tuple[float, float], aspect: tuple[float, float], name: str) -> None:
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"{name} scale must satisfy 0 < min <= max <= 1, got {tuple(scale)}")
    if not 0 < aspect[0] <= aspect[1]:
        raise ValueError(f"{name} aspect ratio must satisfy 0 < min <= max, got {tuple(aspect)}")


def block_size(
    grid: tuple[int, int],
    scale: tuple[float, float],
    aspect: tuple[float, float],
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """(height, width) of a block of ``scale`` x grid area and height/width ratio ``aspect`` (one uniform draw
    for both, as in the reference), at least 1 and smaller than the grid in each side."""
    h, w = grid
    u = torch.rand((), generator=generator).item()
    area = int(h * w * (scale[0] + u * (scale[1] - scale[0])))
    ratio = aspect[0] + u * (aspect[1] - aspect[0])
    bh, bw = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
    return max(1, min(bh, h - 1 if h > 1 else 1)), max(1, min(bw, w - 1 if w > 1 else 1))


def _place(grid: tuple[int, int], size: tuple[int, int], generator: torch.Generator | None) -> Tensor:
    """A (h, w) bool mask with one block of ``size`` at a uniformly drawn position."""
    (h, w), (bh, bw) = grid, size
    top = int(torch.randint(0, h - bh + 1, (), generator=generator))
    left = int(torch.randint(0, w - bw + 1, (), generator=generator))
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[top : top + bh, left : left + bw] = True
    return mask


def multiblock_masks(
    batch_size: int,
    grid: tuple[int, int],
    num_targets: int = 4,
    target_scale: tuple[float, float] = (0.15, 0.2),
    target_aspect: tuple[float, float] = (0.75, 1.5),
    context_scale: tuple[float, float] = (0.85, 1.0),
    min_keep: int = 10,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Context and target patch indices for a batch.

    Returns:
        context (B, K_c) long: patches the context encoder sees (raster order; no target patch among them);
        targets (B, M, K_t) long: the patches of each of the M target blocks (raster order), K_t = th * tw.
    """
    if num_targets < 1:
        raise ValueError(f"num_targets must be >= 1, got {num_targets}")
    if min_keep < 1:
        raise ValueError(f"min_keep must be >= 1, got {min_keep}")
    _check(target_scale, target_aspect, "target")
    _check(context_scale, (1.0, 1.0), "context")
    _h, _w = grid
    t_size = block_size(grid, target_scale, target_aspect, generator)
    c_size = block_size(grid, context_scale, (1.0, 1.0), generator)
    contexts, targets = [], []
    for _ in range(batch_size):
        blocks = [_place(grid, t_size, generator) for _ in range(num_targets)]
        targets.append(torch.stack([b.flatten().nonzero().squeeze(1) for b in blocks]))  # (M, th * tw)
        constraints, tries = len(blocks), 0
        while True:
            context = _place(grid, c_size, generator)
            for b in blocks[:constraints]:
                context &= ~b
            if int(context.sum()) >= min_keep or constraints == 0:  # (an unconstrained block is taken as it is)
                break
            tries += 1
            if tries % 20 == 0:  # too crowded: let one more target block overlap the context
                constraints = max(0, constraints - 1)
        contexts.append(context.flatten().nonzero().squeeze(1))
    keep = min(len(c) for c in contexts)
    return torch.stack([c[:keep] for c in contexts]), torch.stack(targets)
