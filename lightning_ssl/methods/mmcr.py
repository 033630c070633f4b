"""MMCR: Maximum Manifold Capacity Representations (Yerxa, Kuang, Simoncelli & Chung, "Efficient Coding of Natural
Images using Maximum Manifold Capacity Representations", NeurIPS 2023; code: ThomasYerxa/mmcr).

For each image, V augmented views (the paper: 2 to 40; more views, better centroids):
    h = f(x)                          backbone (the representation kept for downstream tasks)
    z = g(h) / ||g(h)||               2-layer MLP projector (BN + ReLU between), on the unit sphere
    c = mean over the views of z      the image's centroid; C = the (N, D) matrix of the batch's centroids
    loss = -||C||_* + lambda * mean over images of ||Z_image||_*       ||.||_*: nuclear norm (losses/mmcr.py)
Views of one image agreeing makes its centroid long (|c| -> 1); centroids of different images spreading over many
directions makes C high-rank: the nuclear norm rewards both, with no negatives, predictor or teacher. lambda = 0
(no local term) is the paper's main setting. Under DDP, C is the global batch's centroid matrix (gathered with
gradients), so the loss and its gradient equal one process holding the whole batch.

Views: ``SimCLRViews(num_views=V)`` (the reference's CIFAR recipe: 40 views of 32 images) or ``MultiCropViews``;
views of one size go through the backbone as one batch and all views through the projector as one batch.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lightning_ssl.losses.mmcr import MMCRLoss, mmcr_terms
from lightning_ssl.methods.base import SSLMethod, forward_views
from lightning_ssl.modules.backbones import Backbone
from lightning_ssl.modules.heads import ProjectionHead
from lightning_ssl.optim import WarmupCosineLR


class MMCR(SSLMethod):
    """MMCR: maximize the nuclear norm of the matrix of per-image view centroids.

    Args:
        backbone: Image encoder (B, C, H, W) -> (B, D); ``embed`` returns its features.
        proj_hidden_dim: Width of the projector's hidden layers (the reference, CIFAR: 512; ImageNet: 8192).
        proj_dim: Output dimension of the projector (the reference, CIFAR: 128; ImageNet: 512).
        proj_layers: Linear layers of the projector (the reference, CIFAR: 2; BatchNorm + ReLU between them).
        lambda_local: Weight >= 0 of the per-image nuclear norms of the views (the paper's main setting: 0).
        optimizer: Optimizer factory (the reference, CIFAR: Adam, lr 1e-3, weight decay 1e-6).
        scheduler: LR schedule factory (the reference, CIFAR: none, a constant LR).
    """

    def __init__(
        self,
        backbone: Backbone,
        proj_hidden_dim: int = 512,
        proj_dim: int = 128,
        proj_layers: int = 2,
        lambda_local: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        super().__init__(backbone, optimizer, scheduler)
        self.save_hyperparameters()
        self.criterion = MMCRLoss(lambda_local)  # validates lambda_local
        self.projector = ProjectionHead(self.num_features, proj_hidden_dim, proj_dim, num_layers=proj_layers)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        views, _ = batch
        if len(views) < 2:
            raise ValueError(f"MMCR needs at least 2 views per image (its centroids average them), got {len(views)}")
        h = forward_views(self.backbone, views)  # V x (N, D)
        z = self.projector(torch.cat(h)).view(len(views), len(views[0]), -1)  # (V, N, K), normalized in the loss
        lam = self.criterion.lambda_local
        global_nuc, local_nuc = mmcr_terms(z, local=lam > 0, gather_distributed=self.criterion.gather_distributed)
        loss = lam * local_nuc - global_nuc
        self.log("train/centroid_nuclear_norm", global_nuc)
        if lam > 0:
            self.log("train/view_nuclear_norm", local_nuc)
        self.log("train/loss", loss, prog_bar=True)
        return {"loss": loss, "features": h[0].detach()}
