"""NNCLR: Nearest-Neighbor Contrastive Learning of Visual Representations (Dwibedi et al., "With a Little Help
from My Friends", ICCV 2021).

For each image, two augmented views x_1, x_2:
    z = g(f(x)), p = q(z)            backbone, 3-layer projector (BN), 2-layer predictor
    n_1 = NN(z_1, Q), n_2 = NN(z_2, Q)        nearest neighbours (cosine) in the support set Q, no gradient
    loss = (InfoNCE(n_1, p_2) + InfoNCE(n_2, p_1)) / 2          negatives: the other predictions of the global batch
    Q <- enqueue(z_1 / |z_1|)        Q is a queue of earlier projections (98304 on ImageNet), a ring buffer saved
                                     in checkpoints, filled with the projections of all processes
The neighbour of an image is another image that looks alike, so the positive pairs carry more variation than
augmentation alone gives. Q starts as random unit vectors, as in the common implementations.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lightning_ssl.losses.info_nce import _check_temperature
from lightning_ssl.losses.nnclr import nearest_neighbours, nnclr_loss
from lightning_ssl.methods.base import SSLMethod
from lightning_ssl.modules.backbones import Backbone
from lightning_ssl.modules.heads import ProjectionHead
from lightning_ssl.modules.queue import check_queue_size, enqueue
from lightning_ssl.optim import WarmupCosineLR


class NNCLR(SSLMethod):
    """NNCLR: the nearest neighbour of a view in a support queue is the positive of the other view's prediction.

    Args:
        backbone: The encoder f: images (B, C, H, W) -> features (B, D), the representation kept for downstream
            use (``embed``). A project backbone (``SmallCNN``, ``ResNet``, ``ViT``, ``TimmBackbone``, ...) or any
            ``nn.Module`` given by ``class_path``.
        proj_hidden_dim: Hidden width of the 3-layer projector (2048 in the paper).
        proj_dim: Output width of projector and predictor, the queue's width (256 in the paper).
        pred_hidden_dim: Hidden width of the 2-layer predictor (4096 in the paper).
        queue_size: Size of the support set Q of earlier projections (98304 in the paper); at least the global
            batch.
        temperature: InfoNCE temperature, > 0 (0.1 in the paper).
        optimizer: Factory called with the parameter groups (no weight decay on biases and norm parameters);
            from a config, the ``class_path`` / ``init_args`` of any ``torch.optim`` optimizer. Default AdamW.
        scheduler: Factory called with the optimizer, stepped every optimizer step. Default ``WarmupCosineLR``
            (linear warm-up, then cosine over ``trainer.estimated_stepping_batches``); None: a constant LR.
    """

    # buffers, saved in checkpoints
    queue: Tensor  # (K, d) the support set
    queue_ptr: Tensor  # () where the next projections are written

    def __init__(
        self,
        backbone: Backbone,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 256,
        pred_hidden_dim: int = 4096,
        queue_size: int = 98304,
        temperature: float = 0.1,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        super().__init__(backbone, optimizer, scheduler)
        self.save_hyperparameters()
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        _check_temperature(temperature)
        self.temperature = temperature
        self.projector = ProjectionHead(
            self.num_features, proj_hidden_dim, proj_dim, num_layers=3, last_batch_norm=True
        )
        self.predictor = ProjectionHead(proj_dim, pred_hidden_dim, proj_dim, num_layers=2)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))  # the support set
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def on_fit_start(self) -> None:
        super().on_fit_start()
        batch = getattr(getattr(self.trainer, "datamodule", None), "batch_size", None)
        check_queue_size("NNCLR", len(self.queue), batch, self.trainer.world_size)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        (x_1, x_2), _ = batch
        h_1 = self.backbone(x_1)
        z_1, z_2 = self.projector(h_1), self.projector(self.backbone(x_2))
        p_1, p_2 = self.predictor(z_1), self.predictor(z_2)
        n_1, n_2 = nearest_neighbours(z_1, self.queue), nearest_neighbours(z_2, self.queue)
        loss = nnclr_loss(p_1, p_2, n_1, n_2, self.temperature)
        enqueue(self.queue, self.queue_ptr, F.normalize(z_1.detach().float(), dim=1))
        self.log("train/loss", loss, prog_bar=True)
        return {"loss": loss, "features": h_1.detach()}
