"""SimSiam: Exploring Simple Siamese Representation Learning (Chen & He, CVPR 2021).

    z = h(f(x))                      backbone + 3-layer projector (BN on every layer, output included); its hidden
                                     width is the backbone's feature width, as in the reference code
    p = pred(z)                      2-layer bottleneck predictor
    loss = D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2,   D = negative cosine similarity
No momentum encoder and no negatives: the stop-gradient alone prevents collapse (sec. 4).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lightning_ssl.losses.negative_cosine import negative_cosine_similarity
from lightning_ssl.methods.base import SSLMethod
from lightning_ssl.modules.backbones import Backbone
from lightning_ssl.modules.heads import ProjectionHead
from lightning_ssl.optim import WarmupCosineLR


class SimSiam(SSLMethod):
    """SimSiam: projector + predictor with a stop-gradient on the other view, no momentum encoder.

    Args:
        backbone: The encoder f: images (B, C, H, W) -> features (B, D), the representation kept for downstream
            use (``embed``). A project backbone (``SmallCNN``, ``ResNet``, ``ViT``, ``TimmBackbone``, ...) or any
            ``nn.Module`` given by ``class_path``.
        proj_dim: Output width of the 3-layer projector (2048 in the paper).
        pred_hidden_dim: Bottleneck width of the 2-layer predictor (512 in the paper: a quarter of ``proj_dim``).
        proj_hidden_dim: Hidden width of the projector; None: the backbone's feature width, as the reference
            code does (2048 for ResNet-50).
        optimizer: Factory called with the parameter groups (no weight decay on biases and norm parameters);
            from a config, the ``class_path`` / ``init_args`` of any ``torch.optim`` optimizer. Default AdamW.
        scheduler: Factory called with the optimizer, stepped every optimizer step. Default ``WarmupCosineLR``
            (linear warm-up, then cosine over ``trainer.estimated_stepping_batches``); None: a constant LR.
    """

    def __init__(
        self,
        backbone: Backbone,
        proj_dim: int = 2048,
        pred_hidden_dim: int = 512,
        proj_hidden_dim: int | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        super().__init__(backbone, optimizer, scheduler)
        self.save_hyperparameters()
        hidden = proj_hidden_dim if proj_hidden_dim is not None else self.num_features
        self.projector = ProjectionHead(self.num_features, hidden, proj_dim, num_layers=3, last_batch_norm=True)
        self.predictor = ProjectionHead(proj_dim, pred_hidden_dim, proj_dim, num_layers=2)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        (x1, x2), _ = batch
        h1 = self.backbone(x1)
        z1, z2 = self.projector(h1), self.projector(self.backbone(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = (negative_cosine_similarity(p1, z2) + negative_cosine_similarity(p2, z1)) / 2
        self.log("train/loss", loss, prog_bar=True)
        return {"loss": loss, "features": h1.detach()}
