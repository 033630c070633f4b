"""RotNet: Unsupervised Representation Learning by Predicting Image Rotations (Gidaris, Singh & Komodakis, ICLR 2018).

Rotate every image by 0, 90, 180 and 270 degrees and ask which rotation was applied:
    x_k = rot(x, 90 k)      k = 0..3, all four copies in the same batch (the paper found this works best)
    h = f(x_k)              backbone (the representation kept for downstream tasks)
    loss = CE(g(h), k)      4-way classifier head g
Recognising "which way is up" requires knowing what the object is and where its parts are, so the backbone has
to learn object-level features. The rotations are ``torch.rot90`` on the whole batch, on its device.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lightning_ssl.methods.base import SSLMethod
from lightning_ssl.modules.backbones import Backbone
from lightning_ssl.modules.heads import ProjectionHead
from lightning_ssl.optim import WarmupCosineLR


def rotate_batch(x: Tensor) -> tuple[Tensor, Tensor]:
    """Images (B, C, H, W), H == W -> the four rotations (4B, C, H, W) and their targets (4B,) in {0, 1, 2, 3}:
    rows [kB, (k+1)B) are the batch rotated by 90k degrees counter-clockwise."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation prediction needs square images, got {x.shape[-2]}x{x.shape[-1]}")
    rotated = torch.cat([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)])
    targets = torch.arange(4, device=x.device).repeat_interleave(len(x))
    return rotated, targets


class RotNet(SSLMethod):
    """RotNet: every image rotated by 0, 90, 180 and 270 degrees, a 4-way classifier predicts the rotation.

    Args:
        backbone: The encoder f: images (B, C, H, W) -> features (B, D), the representation kept for downstream
            use (``embed``). A project backbone (``SmallCNN``, ``ResNet``, ``ViT``, ``TimmBackbone``, ...) or any
            ``nn.Module`` given by ``class_path``.
        head_hidden_dim: Hidden width of the rotation classifier (an MLP on the backbone features; the paper used
            the last conv blocks of a NIN as the head).
        head_layers: Linear layers in the classifier, >= 1.
        optimizer: Factory called with the parameter groups (no weight decay on biases and norm parameters);
            from a config, the ``class_path`` / ``init_args`` of any ``torch.optim`` optimizer. Default AdamW.
        scheduler: Factory called with the optimizer, stepped every optimizer step. Default ``WarmupCosineLR``
            (linear warm-up, then cosine over ``trainer.estimated_stepping_batches``); None: a constant LR.
    """

    def __init__(
        self,
        backbone: Backbone,
        head_hidden_dim: int = 512,
        head_layers: int = 2,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        super().__init__(backbone, optimizer, scheduler)
        self.save_hyperparameters()
        self.classifier = ProjectionHead(self.num_features, head_hidden_dim, 4, num_layers=head_layers)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        views, _ = batch
        x = views[0]
        rotated, targets = rotate_batch(x)  # (4B, C, H, W), (4B,)
        h = self.backbone(rotated)  # (4B, D)
        logits = self.classifier(h)
        loss = F.cross_entropy(logits.float(), targets)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/rotation_acc", (logits.argmax(1) == targets).float().mean())
        return {"loss": loss, "features": h[: len(x)].detach()}  # the upright copies, for the online probe
