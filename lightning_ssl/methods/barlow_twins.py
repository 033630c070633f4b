"""Barlow Twins: Self-Supervised Learning via Redundancy Reduction (Zbontar et al., ICML 2021).

For each image, two augmented views x_a, x_b:
    h = f(x)                  backbone (the representation kept for downstream tasks)
    z = g(h)                  projector: 3 linear layers, BN + ReLU between them (8192-8192-8192 in the paper)
    C = z_a'^T z_b' / N       cross-correlation of the batch-standardized embeddings over the global batch
    loss = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2       (losses/barlow_twins.py)
Pushing C to the identity makes the views agree dimension by dimension (diagonal) and decorrelates the
dimensions (off-diagonal), so no negatives, predictor or momentum encoder are needed. lambda = 5e-3 at D = 8192
(the paper), scaled by 1/D for other widths unless given. The paper trains with LARS (lr 0.2 for weights, 0.0048
for biases and BN parameters, batch 2048: ``param_groups.no_decay_lr``); the two views go through the networks
separately, as in the reference. solo-learn's CIFAR recipe scales the loss by 0.1 (``loss_scale``), which matters
with LARS's clipped trust ratio (``trust_clip``): the gradients' norm sets where the clip binds.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lightning_ssl.losses.barlow_twins import BarlowTwinsLoss
from lightning_ssl.methods.base import SSLMethod
from lightning_ssl.modules.backbones import Backbone
from lightning_ssl.modules.heads import ProjectionHead
from lightning_ssl.optim import WarmupCosineLR


class BarlowTwins(SSLMethod):
    """Barlow Twins: the cross-correlation of the two views' standardized embeddings is pushed to the identity.

    Args:
        backbone: The encoder f: images (B, C, H, W) -> features (B, D), the representation kept for downstream
            use (``embed``). A project backbone (``SmallCNN``, ``ResNet``, ``ViT``, ``TimmBackbone``, ...) or any
            ``nn.Module`` given by ``class_path``.
        proj_hidden_dim: Hidden width of the projector (8192 in the paper).
        proj_dim: Output width of the projector, D (8192 in the paper).
        proj_layers: Linear layers in the projector, BN + ReLU between them (3 in the paper).
        lambda_offdiag: Weight of the off-diagonal (redundancy-reduction) term, >= 0; None: 5e-3 * 8192 / D, the
            paper's 5e-3 at D = 8192 scaled to the width.
        loss_scale: A factor on the whole loss, > 0 (1 in the paper; 0.1 in solo-learn's CIFAR-10 recipe).
        optimizer: Factory called with the parameter groups (no weight decay on biases and norm parameters);
            from a config, the ``class_path`` / ``init_args`` of any ``torch.optim`` optimizer. Default AdamW.
        scheduler: Factory called with the optimizer, stepped every optimizer step. Default ``WarmupCosineLR``
            (linear warm-up, then cosine over ``trainer.estimated_stepping_batches``); None: a constant LR.
    """

    def __init__(
        self,
        backbone: Backbone,
        proj_hidden_dim: int = 8192,
        proj_dim: int = 8192,
        proj_layers: int = 3,
        lambda_offdiag: float | None = None,
        loss_scale: float = 1.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        super().__init__(backbone, optimizer, scheduler)
        self.save_hyperparameters()
        if not loss_scale > 0:
            raise ValueError(f"loss_scale must be > 0, got {loss_scale}")
        self.loss_scale = loss_scale
        self.projector = ProjectionHead(self.num_features, proj_hidden_dim, proj_dim, num_layers=proj_layers)
        self.criterion = BarlowTwinsLoss(lambda_offdiag)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        (x_a, x_b), _ = batch
        h_a = self.backbone(x_a)
        z_a, z_b = self.projector(h_a), self.projector(self.backbone(x_b))
        loss = self.loss_scale * self.criterion(z_a, z_b)
        self.log("train/loss", loss, prog_bar=True)
        return {"loss": loss, "features": h_a.detach()}
