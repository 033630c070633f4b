"""How local are a backbone's patch features? Statistics of the patch-to-patch cosine similarities within images,
the quantity DINOv3's Gram anchoring protects (Siméoni et al., 2025, sec. 4.1: dense features degrade in long
DINO training as patches become alike)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def patch_similarity_stats(patches: Tensor, grid: tuple[int, int], far: int = 3) -> dict[str, float]:
    """Cosine similarities of patch features within each image, by distance on the patch grid.

    Args:
        patches: (B, N, D) patch features, N = h * w in row-major order.
        grid: (h, w), the patch grid.
        far: the smallest Manhattan distance (in patches) counted as distant.
    Returns:
        ``{"near": mean cosine to the 4 grid neighbours, "far": mean cosine to the patches ``far`` or more steps
        away, "locality": near - far (about 0 when every patch of an image has the same feature), "mean": mean
        cosine between distinct patches}``, each averaged over the images.
    """
    h, w = grid
    if patches.ndim != 3 or patches.shape[1] != h * w:
        raise ValueError(f"need (B, N, D) patch features with N = {h} x {w}, got {tuple(patches.shape)}")
    if far < 2 or far > h + w - 2:
        raise ValueError(f"far must lie in [2, h + w - 2] = [2, {h + w - 2}] for a {h}x{w} grid, got {far}")
    f = F.normalize(patches.float(), dim=-1)
    sim = f @ f.transpose(1, 2)  # (B, N, N)
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([rows.flatten(), cols.flatten()], 1).float().to(sim.device)
    dist = torch.cdist(pos, pos, p=1)

    def mean_where(sel: Tensor) -> float:
        sel = sel.float()
        return ((sim * sel).sum((1, 2)) / sel.sum()).mean().item()

    near, distant = mean_where(dist == 1), mean_where(dist >= far)
    return {"near": near, "far": distant, "locality": near - distant, "mean": mean_where(dist > 0)}
