"""BYOL: Bootstrap Your Own Latent (Grill et al., NeurIPS 2020).

    online:  y = f(x), z = g(y), p = q(z)          backbone, projector, predictor (trained)
    target:  z' = g'(f'(x))                        momentum copy of backbone + projector (no gradient)
    loss = ||p1/|p1| - z2'/|z2'|||^2 + ||p2/|p2| - z1'/|z1'|||^2  = (2 - 2 cos) for both view orders
    (f', g') <- tau (f', g') + (1 - tau) (f, g)     tau from 0.996 to 1 on a cosine schedule
No negatives: the predictor and the slowly moving target prevent collapse.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_ssl.losses.negative_cosine import byol_loss
from lightning_ssl.methods.base import MomentumMethod
from lightning_ssl.modules.backbones import Backbone
from lightning_ssl.modules.heads import ProjectionHead
from lightning_ssl.modules.momentum import make_teacher
from lightning_ssl.optim import WarmupCosineLR


class BYOL(MomentumMethod):
    """BYOL: online network with a predictor, EMA target network, symmetric normalized-MSE loss, no negatives.

    Args:
        backbone: The encoder f: images (B, C, H, W) -> features (B, D), the representation kept for downstream
            use (``embed``). A project backbone (``SmallCNN``, ``ResNet``, ``ViT``, ``TimmBackbone``, ...) or any
            ``nn.Module`` given by ``class_path``.
        proj_hidden_dim: Hidden width of the projector and of the predictor's input layer (4096 in the paper).
        proj_dim: Output width of projector and predictor (256 in the paper).
        pred_hidden_dim: Hidden width of the predictor q (4096 in the paper).
        momentum: EMA momentum of the teacher (target) network at the first optimizer step, in [0, 1];
            0.996 in the paper, rising to 1 on a cosine schedule.
        momentum_end: Momentum at the last optimizer step, reached on a cosine schedule by optimizer step
            (correct under gradient accumulation and resume); equal to ``momentum`` for a constant one.
        optimizer: Factory called with the parameter groups (no weight decay on biases and norm parameters);
            from a config, the ``class_path`` / ``init_args`` of any ``torch.optim`` optimizer. Default AdamW.
        scheduler: Factory called with the optimizer, stepped every optimizer step. Default ``WarmupCosineLR``
            (linear warm-up, then cosine over ``trainer.estimated_stepping_batches``); None: a constant LR.
    """

    def __init__(
        self,
        backbone: Backbone,
        proj_hidden_dim: int = 4096,
        proj_dim: int = 256,
        pred_hidden_dim: int = 4096,
        momentum: float = 0.996,
        momentum_end: float = 1.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        super().__init__(backbone, optimizer, scheduler, momentum, momentum_end)
        self.save_hyperparameters()
        self.projector = ProjectionHead(self.num_features, proj_hidden_dim, proj_dim, num_layers=2)
        self.predictor = ProjectionHead(proj_dim, pred_hidden_dim, proj_dim, num_layers=2)
        self.teacher_backbone, self.teacher_projector = make_teacher(self.backbone), make_teacher(self.projector)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.teacher_backbone), (self.projector, self.teacher_projector)]

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        (x1, x2), _ = batch
        h1 = self.backbone(x1)
        p1, p2 = self.predictor(self.projector(h1)), self.predictor(self.projector(self.backbone(x2)))
        with torch.no_grad():
            z1, z2 = (self.teacher_projector(self.teacher_backbone(x)) for x in (x1, x2))
        loss = byol_loss(p1, z2) + byol_loss(p2, z1)
        self.log("train/loss", loss, prog_bar=True)
        return {"loss": loss, "features": h1.detach()}
