"""LeJEPA: Provable and Scalable Self-Supervised Learning Without the Heuristics (Balestriero & LeCun, 2025,
arXiv:2511.08544, alg. 1; code: rbalestr-lab/lejepa).

For each image, V augmented views: G global (full-size) crops and V - G local (small) ones:
    h = f(x)                          backbone (the representation kept for downstream tasks)
    z = g(h)                          projector: 3 linear layers, BN + ReLU between them, for every view
    mu = mean of the G global views' z               the target that every view predicts
    prediction = mean over views, images, dims of (mu - z)^2
    SIGReg = Epps-Pulley statistic of z's random 1-D projections against N(0, 1), per view, averaged
    loss = (1 - lambda) * prediction + lambda * SIGReg                (losses/lejepa.py, losses/sigreg.py)
One hyperparameter, lambda (0.05 in the paper). No teacher, no stop-gradient, no predictor network: SIGReg pulls
the embeddings towards an isotropic Gaussian, which rules out collapse. Under DDP SIGReg's statistic is over the
global batch, with exact gradients.

Views: the global views are those of the first view's size. ``MultiCropViews`` gives 2 global and several local
crops (the reference's recipe: 2 + 6); ``SimCLRViews(num_views=4)`` gives 4 global views (the reference's minimal
example). Views of one size go through the backbone as one batch, and all views through the projector as one
batch, so BatchNorm statistics cover the views together, as in the reference.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lightning_ssl.losses.lejepa import check_lambda, lejepa_prediction_loss
from lightning_ssl.losses.sigreg import SIGReg
from lightning_ssl.methods.base import SSLMethod, forward_views
from lightning_ssl.modules.backbones import Backbone
from lightning_ssl.modules.heads import ProjectionHead
from lightning_ssl.optim import WarmupCosineLR


class LeJEPA(SSLMethod):
    """LeJEPA: multi-view prediction of the global views' mean embedding, regularized by SIGReg.

    Args:
        backbone: Image encoder (B, C, H, W) -> (B, D); ``embed`` returns its features.
        proj_hidden_dim: Width of the projector's hidden layers (the reference: 2048).
        proj_dim: Output dimension K of the projector, the space SIGReg shapes (the reference: 128 by default,
            16 in its minimal example's recommended run, 512 in its ImageNet-10 launch script).
        proj_layers: Linear layers of the projector (the reference: 3, BatchNorm + ReLU between them).
        lambda_sigreg: lambda in [0, 1], SIGReg's weight; the prediction term gets 1 - lambda (the paper: 0.05,
            explored 0.01 to 0.1).
        num_slices: Random 1-D projections per step for SIGReg (the reference's minimal example: 256).
        per_view: SIGReg of each view's embeddings, averaged over views (the paper); False: of all views
            flattened into one sample.
        slice_seed: Seed of SIGReg's directions (drawn fresh each step from ``(slice_seed, step)``).
        optimizer: Optimizer factory (the reference: AdamW, lr 5e-4, weight decay 5e-2 for ViTs, 5e-4 for ResNets).
        scheduler: LR schedule factory (the reference: linear warmup, then cosine to lr / 1000).
    """

    def __init__(
        self,
        backbone: Backbone,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        proj_layers: int = 3,
        lambda_sigreg: float = 0.05,
        num_slices: int = 256,
        per_view: bool = True,
        slice_seed: int = 0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        super().__init__(backbone, optimizer, scheduler)
        self.save_hyperparameters()
        check_lambda(lambda_sigreg)
        self.lambda_sigreg = lambda_sigreg
        self.projector = ProjectionHead(self.num_features, proj_hidden_dim, proj_dim, num_layers=proj_layers)
        self.sigreg = SIGReg(num_slices, per_view=per_view, seed=slice_seed)  # counts its calls: fresh slices

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        views, _ = batch
        if len(views) < 2:
            raise ValueError(f"LeJEPA needs at least 2 views per image, got {len(views)}")
        n = len(views[0])
        is_global = [v.shape[1:] == views[0].shape[1:] for v in views]
        views = [v for v, g in zip(views, is_global, strict=True) if g] + [
            v for v, g in zip(views, is_global, strict=True) if not g
        ]  # global views first
        h = forward_views(self.backbone, views)  # V x (N, D)
        z = self.projector(torch.cat(h)).view(len(views), n, -1)  # (V, N, K)
        prediction = lejepa_prediction_loss(z, num_global=sum(is_global))
        sigreg = self.sigreg(z)
        loss = (1 - self.lambda_sigreg) * prediction + self.lambda_sigreg * sigreg
        self.log_dict({"train/prediction": prediction, "train/sigreg": sigreg})
        self.log("train/loss", loss, prog_bar=True)
        return {"loss": loss, "features": h[0].detach()}
