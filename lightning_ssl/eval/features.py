"""Extract frozen features from a backbone (or any module with ``embed``) over a dataloader."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader


@torch.no_grad()
def extract_features(
    model: nn.Module | Callable[[Tensor], Tensor],
    loader: DataLoader,
    device: str | torch.device = "cpu",
    precision: str | None = None,
    progress: bool = False,
    batch_transform: Callable | None = None,
) -> tuple[Tensor, Tensor]:
    """Run ``model.embed`` (or ``model``) in eval mode over ``loader`` of ``(image, label)`` batches and return
    float32 features (N, D) on the CPU and labels (N,). ``precision="bf16"`` autocasts. ``batch_transform``
    maps a transferred ``(x, y)`` batch (e.g. a datamodule's ``on_after_batch_transfer``)."""
    fn = getattr(model, "embed", model)
    was_training = getattr(model, "training", False)
    if isinstance(model, nn.Module):
        model.eval().to(device)
    feats, labels = [], []
    device = torch.device(device)
    it: Iterable = loader
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(loader, desc="features", leave=False)
    for x, y in it:
        if isinstance(x, torch.Tensor):  # text batches are lists of strings: the encoder tokenizes
            x = x.to(device, non_blocking=True)
        if batch_transform is not None:
            x, y = batch_transform((x, y), 0)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            f = fn(x)
        feats.append(f.float().flatten(1).cpu())
        labels.append(torch.as_tensor(y))
    if isinstance(model, nn.Module):
        model.train(was_training)
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def extract_patch_features(
    backbone: nn.Module,
    loader: DataLoader,
    device: str | torch.device = "cpu",
    precision: str | None = None,
    progress: bool = False,
    batch_transform: Callable | None = None,
    dtype: torch.dtype = torch.float16,
) -> tuple[Tensor, Tensor]:
    """Per-patch features (``modules.pretrained.patch_features``) of a frozen backbone over ``loader`` of
    ``(image, target)`` batches: feature maps (N, D, h, w) stored as ``dtype`` on the CPU (float16 halves the
    memory of a token cache; probes compute in float32) and the targets (N,) labels or (N, H, W) masks.
    A backbone without patch tokens or a feature map raises a ``ValueError`` on the first batch."""
    from lightning_ssl.modules.pretrained import patch_features

    was_training = backbone.training
    backbone.eval().to(device)
    device = torch.device(device)
    maps: list[Tensor] = []
    targets: list[Tensor] = []
    it: Iterable = loader
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(loader, desc="patch features", leave=False)
    try:
        for x, y in it:
            x = x.to(device, non_blocking=True)
            if batch_transform is not None:
                x, y = batch_transform((x, y), 0)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                f = patch_features(backbone, x)
            maps.append(f.to(dtype).cpu())
            targets.append(torch.as_tensor(y).cpu())
    finally:
        backbone.train(was_training)
    return torch.cat(maps), torch.cat(targets)
