"""SimCLR: A Simple Framework for Contrastive Learning of Visual Representations (Chen et al., ICML 2020).

For each image, two augmented views x1, x2:
    h = f(x)          backbone (the representation kept for downstream tasks)
    z = g(h)          2-layer MLP projector (dropped after pretraining)
    loss = NT-Xent(z1, z2, tau)   the other view is the positive, the other 2N-2 views are negatives
Negatives come from the global batch under DDP (gathered with gradients). The two views are forwarded as
one batch, so BatchNorm statistics cover both (as in the reference implementation).

Multi-crop (Caron et al., 2020, SwAV sec. 3.2, who also apply it to SimCLR): with ``MultiCropViews`` the batch
holds 2 global views and V small local ones (forwarded as a second batch); the loss averages NT-Xent over every
pair of a global view with another view, (g1, g2), (g1, l_v), (g2, l_v), so small crops are pulled towards the
global ones and never towards each other.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from lightning_ssl.losses.info_nce import NTXentLoss
from lightning_ssl.methods.base import SSLMethod
from lightning_ssl.modules.backbones import Backbone
from lightning_ssl.modules.heads import ProjectionHead
from lightning_ssl.optim import WarmupCosineLR


class SimCLR(SSLMethod):
    """SimCLR: a backbone, a 2-layer MLP projector and the NT-Xent loss over 2N views.

    Args:
        backbone: The encoder f: images (B, C, H, W) -> features (B, D), the representation kept for downstream
            use (``embed``). A project backbone (``SmallCNN``, ``ResNet``, ``ViT``, ``TimmBackbone``, ...) or any
            ``nn.Module`` given by ``class_path``.
        proj_hidden_dim: Hidden width of the projector g (2048 in the paper, the ResNet-50 feature width).
        proj_dim: Output width of the projector, where the loss is computed (128 in the paper).
        temperature: NT-Xent temperature tau, > 0 (0.1 in the paper's CIFAR-10 and 0.1-0.5 in its ImageNet runs;
            lower is sharper).
        optimizer: Factory called with the parameter groups (no weight decay on biases and norm parameters);
            from a config, the ``class_path`` / ``init_args`` of any ``torch.optim`` optimizer. Default AdamW.
        scheduler: Factory called with the optimizer, stepped every optimizer step. Default ``WarmupCosineLR``
            (linear warm-up, then cosine over ``trainer.estimated_stepping_batches``); None: a constant LR.
    """

    def __init__(
        self,
        backbone: Backbone,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        temperature: float = 0.1,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        super().__init__(backbone, optimizer, scheduler)
        self.save_hyperparameters()
        self.projector = ProjectionHead(self.num_features, proj_hidden_dim, proj_dim, num_layers=2)
        self.criterion = NTXentLoss(temperature)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        views, _ = batch
        if len(views) < 2:
            raise ValueError(f"SimCLR needs at least 2 views per image, got {len(views)}")
        x1, x2, local = views[0], views[1], views[2:]
        h = self.backbone(torch.cat([x1, x2]))  # (2B, D)
        z = list(self.projector(h).chunk(2))
        if local:  # multi-crop: the small views as one more batch
            z += list(self.projector(self.backbone(torch.cat(list(local)))).chunk(len(local)))
        pairs = [(g, j) for g in range(2) for j in range(g + 1, len(z))]
        loss = sum(self.criterion(z[g], z[j]) for g, j in pairs) / len(pairs)
        self.log("train/loss", loss, prog_bar=True)
        return {"loss": loss, "features": h[: len(x1)].detach()}
