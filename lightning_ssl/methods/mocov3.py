"""MoCo v3 (Chen, Xie & He, ICCV 2021): a momentum encoder without a queue.

    q1, q2 = pred(proj(f(x1))), pred(proj(f(x2)))          query encoder + predictor
    k1, k2 = proj_m(f_m(x1)), proj_m(f_m(x2))              momentum encoder (no gradient)
    loss = 2 tau * (InfoNCE(q1, k2) + InfoNCE(q2, k1))     negatives: the other keys of the global batch
    f_m <- m f_m + (1 - m) f                                m from 0.99 to 1 on a cosine schedule
Heads and temperature follow the backbone kind, as the reference (facebookresearch/moco-v3): for a ViT a 3-layer
projector and a predictor ending in BatchNorm, tau = 0.2; for a ResNet / CNN a 2-layer projector and a predictor
without the final BatchNorm, tau = 1.0. The projector always ends in a non-affine BatchNorm.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_ssl.losses.info_nce import info_nce_loss
from lightning_ssl.methods.base import MomentumMethod
from lightning_ssl.modules.backbones import Backbone, is_vit
from lightning_ssl.modules.heads import ProjectionHead
from lightning_ssl.modules.momentum import make_teacher
from lightning_ssl.optim import WarmupCosineLR


class MoCoV3(MomentumMethod):
    """MoCo v3: query encoder + predictor, momentum encoder, symmetric InfoNCE over the global batch.

    Args:
        backbone: The encoder f: images (B, C, H, W) -> features (B, D), the representation kept for downstream
            use (``embed``). A project backbone (``SmallCNN``, ``ResNet``, ``ViT``, ``TimmBackbone``, ...) or any
            ``nn.Module`` given by ``class_path``.
        proj_hidden_dim: Hidden width of the projector (4096 in the paper).
        proj_dim: Output width of the projector and predictor (256 in the paper).
        pred_hidden_dim: Hidden width of the 2-layer predictor (4096 in the paper).
        temperature: InfoNCE temperature, > 0; None follows the backbone kind: 0.2 for a ViT, 1.0 for a ResNet /
            CNN (the paper's values).
        proj_layers: Linear layers in the projector; None follows the backbone kind (3 for a ViT, 2 otherwise).
        pred_last_batch_norm: End the predictor with BatchNorm; None follows the backbone kind (True for a ViT).
        momentum: EMA momentum of the teacher (target) network at the first optimizer step, in [0, 1];
            0.99 in the paper, rising to 1.
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
        temperature: float | None = None,
        proj_layers: int | None = None,
        pred_last_batch_norm: bool | None = None,
        momentum: float = 0.99,
        momentum_end: float = 1.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        super().__init__(backbone, optimizer, scheduler, momentum, momentum_end)
        self.save_hyperparameters()
        vit = is_vit(backbone)
        temperature = temperature if temperature is not None else (0.2 if vit else 1.0)
        proj_layers = proj_layers if proj_layers is not None else (3 if vit else 2)
        pred_last_batch_norm = pred_last_batch_norm if pred_last_batch_norm is not None else vit
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.projector = ProjectionHead(
            self.num_features, proj_hidden_dim, proj_dim, num_layers=proj_layers, last_batch_norm=True
        )
        self.predictor = ProjectionHead(
            proj_dim, pred_hidden_dim, proj_dim, num_layers=2, last_batch_norm=pred_last_batch_norm
        )
        self.teacher_backbone, self.teacher_projector = make_teacher(self.backbone), make_teacher(self.projector)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.teacher_backbone), (self.projector, self.teacher_projector)]

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        (x1, x2), _ = batch
        h1 = self.backbone(x1)
        q1, q2 = self.predictor(self.projector(h1)), self.predictor(self.projector(self.backbone(x2)))
        with torch.no_grad():
            k1, k2 = (self.teacher_projector(self.teacher_backbone(x)) for x in (x1, x2))
        loss = (
            2 * self.temperature * (info_nce_loss(q1, k2, self.temperature) + info_nce_loss(q2, k1, self.temperature))
        )
        self.log("train/loss", loss, prog_bar=True)
        return {"loss": loss, "features": h1.detach()}
