"""Jigsaw puzzle pieces (Noroozi & Favaro, "Unsupervised Learning of Visual Representations by Solving Jigsaw
Puzzles", ECCV 2016), on batched tensors.

* ``hamming_permutation_set``: the fixed set of permutations the network classifies, chosen greedily so that
  they are far apart in Hamming distance (the paper's Algorithm 1), deterministic from a seed.
* ``extract_tiles``: a ``grid`` x ``grid`` grid of cells; from each cell a ``tile_size`` tile at a random offset
  (the gap between tiles and the jitter keep edge continuity from giving the answer away), by gathers.
* ``shuffle_tiles`` / ``inverse_permutation`` / ``assemble_tiles``: permute tiles per sample, undo it, stitch.
* ``normalize_tiles``: each tile to zero mean and unit std on its own (sec. 3.3, "shortcuts").
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import torch
from torch import Tensor


def hamming_permutation_set(
    num_permutations: int, num_tiles: int = 9, seed: int = 0, num_candidates: int = 200_000
) -> Tensor:
    """``num_permutations`` permutations of ``num_tiles`` tiles (P, num_tiles), long, far apart in Hamming distance.

    Greedy max-min selection (farthest-point sampling): start from a random permutation, then repeatedly add the
    candidate whose *minimum* distance to the chosen set is largest (ties: the larger *mean* distance, which is
    the paper's criterion, then the seeded candidate order). Candidates are all 9! = 362,880 permutations for a
    3x3 puzzle (a few hundred milliseconds for 100 permutations), or ``num_candidates`` random ones for larger
    puzzles. The same ``seed`` always gives the same set (cached per process).
    """
    return _permutation_set(num_permutations, num_tiles, seed, num_candidates).clone()


@functools.lru_cache(maxsize=8)
def _permutation_set(num_permutations: int, num_tiles: int, seed: int, num_candidates: int) -> Tensor:
    total = math.factorial(num_tiles)
    limit = total if total <= 1_000_000 else num_candidates
    if not 2 <= num_permutations <= limit:
        raise ValueError(f"num_permutations must lie in [2, {limit}] for {num_tiles} tiles, got {num_permutations}")
    g = torch.Generator().manual_seed(seed)
    if total <= 1_000_000:
        cand = np.array(list(itertools.permutations(range(num_tiles))), dtype=np.int8)
        cand = cand[torch.randperm(total, generator=g).numpy()]  # the seed decides the first pick and the ties
    else:
        cand = (
            torch.stack([torch.randperm(num_tiles, generator=g) for _ in range(num_candidates)]).numpy().astype(np.int8)
        )
    cols = np.ascontiguousarray(cand.T)  # (num_tiles, M): one contiguous row per position, fast to compare
    min_d = np.full(len(cand), num_tiles + 1, dtype=np.int32)
    sum_d = np.zeros(len(cand), dtype=np.int32)
    chosen = [0]
    for _ in range(num_permutations - 1):
        same = np.zeros(len(cand), dtype=np.int32)
        for pos, tile in enumerate(cand[chosen[-1]]):
            same += cols[pos] == tile
        d = num_tiles - same  # Hamming distance of every candidate to the newest pick
        np.minimum(min_d, d, out=min_d)
        sum_d += d
        score = min_d.astype(np.int64) * (num_permutations * num_tiles + 1) + sum_d  # min first, then the mean
        score[chosen] = -1
        chosen.append(int(score.argmax()))
    return torch.from_numpy(cand[chosen]).long()


def min_hamming_distance(perms: Tensor) -> int:
    """Smallest Hamming distance between two different rows of ``perms`` (P, N)."""
    d = (perms.unsqueeze(0) != perms.unsqueeze(1)).sum(-1)
    d.fill_diagonal_(perms.shape[1] + 1)
    return int(d.min())


def extract_tiles(
    x: Tensor,
    grid: int = 3,
    tile_size: int | None = None,
    jitter: bool = True,
    generator: torch.Generator | None = None,
    offsets: Tensor | None = None,
) -> Tensor:
    """Cut images (B, C, H, W) into ``grid`` x ``grid`` tiles (B, grid^2, C, t, t), row-major.

    The image is split into cells of side ``H // grid``; each tile of side ``tile_size`` (default: the cell) is
    taken at a uniformly random offset inside its cell when ``jitter``, else centred. Offsets are drawn per
    sample and per tile, and the crops are one gather for the whole batch. ``offsets`` (2, B, grid^2): given
    (row, column) offsets inside the cells instead of random ones.
    """
    b, _c, h, w = x.shape
    if h != w:
        raise ValueError(f"jigsaw tiles need square images, got {h}x{w}")
    cell = h // grid
    t = cell if tile_size is None else tile_size
    if not 1 <= t <= cell:
        raise ValueError(f"tile_size must lie in [1, {cell}] (a {grid}x{grid} grid of {h} px images), got {tile_size}")
    n, room = grid * grid, cell - t
    if offsets is not None:
        if offsets.shape != (2, b, n) or int(offsets.min()) < 0 or int(offsets.max()) > room:
            raise ValueError(f"offsets must be (2, {b}, {n}) integers in [0, {room}], got {tuple(offsets.shape)}")
        off = offsets.to(x.device)
    elif jitter and room > 0:
        device = generator.device if generator is not None else x.device
        off = torch.randint(0, room + 1, (2, b, n), generator=generator, device=device).to(x.device)
    else:
        off = torch.full((2, b, n), room // 2, device=x.device)
    k = torch.arange(n, device=x.device)
    top = (k // grid) * cell + off[0]  # (B, n)
    left = (k % grid) * cell + off[1]
    ar = torch.arange(t, device=x.device)
    rows, cols = top[..., None] + ar, left[..., None] + ar  # (B, n, t)
    bi = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    tiles = x[bi, :, rows[..., :, None], cols[..., None, :]]  # advanced indices first: (B, n, t, t, C)
    return tiles.permute(0, 1, 4, 2, 3).contiguous()


def shuffle_tiles(tiles: Tensor, perms: Tensor) -> Tensor:
    """tiles (B, N, ...) and per-sample permutations (B, N): position i of sample b gets tile ``perms[b, i]``."""
    idx = perms.view(*perms.shape, *([1] * (tiles.ndim - 2))).expand_as(tiles)
    return tiles.gather(1, idx)


def inverse_permutation(perms: Tensor) -> Tensor:
    """The permutations (..., N) that undo ``perms``: ``shuffle_tiles(shuffle_tiles(t, p), inverse(p)) == t``."""
    return perms.argsort(dim=-1)


def assemble_tiles(tiles: Tensor, grid: int = 3) -> Tensor:
    """Stitch row-major tiles (B, grid^2, C, t, t) back into images (B, C, grid*t, grid*t)."""
    b, n, c, t, _ = tiles.shape
    if n != grid * grid:
        raise ValueError(f"expected {grid * grid} tiles, got {n}")
    return tiles.view(b, grid, grid, c, t, t).permute(0, 3, 1, 4, 2, 5).reshape(b, c, grid * t, grid * t)


def normalize_tiles(tiles: Tensor, min_std: float = 0.1) -> Tensor:
    """Standardize each tile (B, N, C, t, t) over its pixels and channels, so neighbours cannot be matched by their
    brightness and contrast. ``min_std`` keeps flat tiles (background) from amplifying their noise."""
    mean = tiles.mean(dim=(2, 3, 4), keepdim=True)
    std = tiles.std(dim=(2, 3, 4), keepdim=True).clamp_min(min_std)
    return (tiles - mean) / std
