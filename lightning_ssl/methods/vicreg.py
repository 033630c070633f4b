"""VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised Learning (Bardes, Ponce & LeCun,
ICLR 2022).

For each image, two augmented views x_a, x_b:
    h = f(x)                      backbone (the representation kept for downstream tasks)
    z = g(h)                      expander: 3 linear layers, BN + ReLU between them (8192-8192-8192 in the paper)
    s = MSE(z_a, z_b)                                          invariance
    v = (hinge(std(z_a)) + hinge(std(z_b))) / 2, gamma = 1     variance: every dimension keeps std >= 1
    c = offdiag(Cov(z_a))^2 / D + offdiag(Cov(z_b))^2 / D      covariance: decorrelated dimensions
    loss = 25 s + 25 v + 1 c                                   (losses/vicreg.py)
Variance and covariance are over the global batch (embeddings gathered with gradients). No negatives, no
predictor, no momentum encoder: the variance term alone prevents collapse. The paper trains with LARS (base lr
0.2 x batch / 256, weight decay 1e-6); the two views go through the networks separately, as in the reference.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lightning_ssl.losses.vicreg import VICRegLoss, vicreg_terms
from lightning_ssl.methods.base import SSLMethod
from lightning_ssl.modules.backbones import Backbone
from lightning_ssl.modules.heads import ProjectionHead
from lightning_ssl.optim import WarmupCosineLR


class VICReg(SSLMethod):
    """VICReg: invariance + variance + covariance terms on the two views' embeddings, no negatives.

    Args:
        backbone: The encoder f: images (B, C, H, W) -> features (B, D), the representation kept for downstream
            use (``embed``). A project backbone (``SmallCNN``, ``ResNet``, ``ViT``, ``TimmBackbone``, ...) or any
            ``nn.Module`` given by ``class_path``.
        proj_hidden_dim: Hidden width of the expander (8192 in the paper).
        proj_dim: Output width of the expander, D (8192 in the paper).
        proj_layers: Linear layers in the expander, BN + ReLU between them (3 in the paper).
        sim_weight: Weight lambda of the invariance (MSE) term (25 in the paper).
        var_weight: Weight mu of the variance hinge (25 in the paper).
        cov_weight: Weight nu of the covariance term (1 in the paper).
        gamma: Target standard deviation of every embedding dimension in the variance hinge (1 in the paper).
        eps: Added to the variance before the square root, for stability (1e-4 in the paper).
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
        sim_weight: float = 25.0,
        var_weight: float = 25.0,
        cov_weight: float = 1.0,
        gamma: float = 1.0,
        eps: float = 1e-4,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        super().__init__(backbone, optimizer, scheduler)
        self.save_hyperparameters()
        self.criterion = VICRegLoss(sim_weight, var_weight, cov_weight, gamma, eps)  # validates the settings
        self.projector = ProjectionHead(self.num_features, proj_hidden_dim, proj_dim, num_layers=proj_layers)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        (x_a, x_b), _ = batch
        h_a = self.backbone(x_a)
        z_a, z_b = self.projector(h_a), self.projector(self.backbone(x_b))
        c = self.criterion
        invariance, variance, covariance = vicreg_terms(z_a, z_b, c.gamma, c.eps)
        loss = c.sim_weight * invariance + c.var_weight * variance + c.cov_weight * covariance
        self.log_dict({"train/invariance": invariance, "train/variance": variance, "train/covariance": covariance})
        self.log("train/loss", loss, prog_bar=True)
        return {"loss": loss, "features": h_a.detach()}
