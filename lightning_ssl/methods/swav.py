"""SwAV: Swapping Assignments between Views (Caron et al., "Unsupervised Learning of Visual Features by
Contrasting Cluster Assignments", NeurIPS 2020).

For a batch of multi-crop views (A global crops first, then small local crops; ``data.MultiCropViews``):
    C <- C / |C|                          the K prototypes (rows of C) are L2-normalized before every step
    z_v = g(f(x_v)) / |g(f(x_v))|         backbone + 2-layer MLP, normalized (crops of one size forwarded together)
    scores_v = z_v C^T                    (B, K)
    q_a = sinkhorn([queue_a C^T; scores_a])[-B:]     codes of the A global crops, no gradient: Sinkhorn-Knopp,
                                                     3 iterations, eps = 0.05, over the global batch (+ the queue)
    loss = mean_a mean_{v != a} CE(q_a, softmax(scores_v / tau))      swapped prediction, tau = 0.1
The prototypes get no update in the first epoch (``freeze_prototypes_epochs``). With small batches a queue of
earlier global-crop embeddings (``queue_size`` > 0) joins the Sinkhorn problem from epoch ``queue_start_epoch`` on,
once it is full, as in the reference (3840 at batch 256); it is a buffer saved in checkpoints. Under DDP the queue
holds every process's embeddings and each process brings its own share of it to the all-reduced Sinkhorn.
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_ssl.losses.swav import SwAVLoss, sinkhorn, swav_loss
from lightning_ssl.methods.base import SSLMethod
from lightning_ssl.modules.backbones import Backbone
from lightning_ssl.modules.distributed import rank, world_size
from lightning_ssl.modules.heads import ProjectionHead
from lightning_ssl.modules.queue import check_queue_size, enqueue
from lightning_ssl.optim import WarmupCosineLR


class _Queue(NamedTuple):
    queue: Tensor  # (K, A, d) global-crop embeddings
    ptr: Tensor  # () where the next ones are written
    rows: Tensor  # () rows written so far, up to K


class SwAV(SSLMethod):
    """SwAV: swapped prediction of Sinkhorn-Knopp cluster codes between multi-crop views.

    Args:
        backbone: The encoder f: images (B, C, H, W) -> features (B, D), the representation kept for downstream
            use (``embed``). A project backbone (``SmallCNN``, ``ResNet``, ``ViT``, ``TimmBackbone``, ...) or any
            ``nn.Module`` given by ``class_path``.
        proj_hidden_dim: Hidden width of the 2-layer projection MLP (2048 in the paper).
        proj_dim: Output width of the projector, the prototypes' width (128 in the paper).
        num_prototypes: Number K of prototype vectors (3000 on ImageNet).
        temperature: Softmax temperature tau of the predicted assignments, > 0 (0.1 in the paper).
        sinkhorn_epsilon: Entropy regularization epsilon of the Sinkhorn-Knopp codes, > 0 (0.05 in the paper;
            lower is sharper but less stable).
        sinkhorn_iterations: Sinkhorn-Knopp normalization iterations (3 in the paper).
        num_assigned_crops: The first crops (the global ones) whose codes are computed and predicted from the
            other crops (2 in the paper).
        freeze_prototypes_epochs: Epochs at the start during which the prototypes get no update (1 in the paper).
        queue_size: Earlier global-crop embeddings that join the Sinkhorn problem, for small batches (3840 at
            batch 256 in the reference); 0: no queue.
        queue_start_epoch: First epoch that uses the queue (15 in the reference); the queue is used once full.
        optimizer: Factory called with the parameter groups (no weight decay on biases and norm parameters);
            from a config, the ``class_path`` / ``init_args`` of any ``torch.optim`` optimizer. Default AdamW.
        scheduler: Factory called with the optimizer, stepped every optimizer step. Default ``WarmupCosineLR``
            (linear warm-up, then cosine over ``trainer.estimated_stepping_batches``); None: a constant LR.
    """

    # buffers, saved in checkpoints; None without a queue (queue_size 0)
    queue: Tensor | None  # (K, A, d) global-crop embeddings of earlier batches
    queue_ptr: Tensor | None  # () where the next embeddings are written
    queue_count: Tensor | None  # () rows written so far, up to K

    def __init__(
        self,
        backbone: Backbone,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        num_prototypes: int = 3000,
        temperature: float = 0.1,
        sinkhorn_epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        num_assigned_crops: int = 2,
        freeze_prototypes_epochs: int = 1,
        queue_size: int = 0,
        queue_start_epoch: int = 15,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        super().__init__(backbone, optimizer, scheduler)
        self.save_hyperparameters()
        if num_prototypes < 2:
            raise ValueError(f"num_prototypes must be >= 2, got {num_prototypes}")
        if num_assigned_crops < 1:
            raise ValueError(f"num_assigned_crops must be >= 1, got {num_assigned_crops}")
        if queue_size < 0 or queue_start_epoch < 0:
            raise ValueError(f"queue_size and queue_start_epoch must be >= 0, got {queue_size} and {queue_start_epoch}")
        self.criterion = SwAVLoss(temperature, sinkhorn_epsilon, sinkhorn_iterations, num_assigned_crops)
        self.freeze_prototypes_epochs, self.queue_start_epoch = freeze_prototypes_epochs, queue_start_epoch
        self.projector = ProjectionHead(self.num_features, proj_hidden_dim, proj_dim, num_layers=2)
        self.prototypes = nn.Linear(proj_dim, num_prototypes, bias=False)
        # the queue of global-crop embeddings (K, A, d), its write position, and the rows written so far (up to K)
        self.register_buffer("queue", torch.zeros(queue_size, num_assigned_crops, proj_dim) if queue_size else None)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long) if queue_size else None)
        self.register_buffer("queue_count", torch.zeros((), dtype=torch.long) if queue_size else None)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.queue is not None:
            batch = getattr(getattr(self.trainer, "datamodule", None), "batch_size", None)
            check_queue_size("SwAV", len(self.queue), batch, self.trainer.world_size)

    def _embeddings(self, views: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Backbone features (V*B, D) and normalized projections (V*B, d); crops of one size in one forward."""
        h = torch.cat(
            [
                self.backbone(torch.cat(list(group)))
                for _, group in itertools.groupby(views, key=lambda v: tuple(v.shape[-2:]))
            ]
        )
        return h, F.normalize(self.projector(h), dim=1)

    @torch.no_grad()
    def _codes(self, scores: list[Tensor], z: list[Tensor]) -> list[Tensor]:
        """Sinkhorn codes (B, K) of the assigned crops, with this process's share of the queue when it is in use."""
        a, c = self.criterion.num_assigned, self.criterion
        live = self._live_queue()
        stored = None
        if live is not None and int(live.rows) == len(live.queue):
            stored = live.queue.tensor_split(world_size())[rank()]  # (K / W, A, d): every row counted once
        codes = []
        for i in range(a):
            s = scores[i] if stored is None else torch.cat([stored[:, i] @ self.prototypes.weight.T, scores[i]])
            codes.append(sinkhorn(s, c.epsilon, c.iterations)[-len(scores[i]) :])
        if live is not None:
            enqueue(live.queue, live.ptr, torch.stack(z[:a], dim=1))
            live.rows.copy_(torch.clamp(live.rows + len(z[0]) * world_size(), max=len(live.queue)))
        return codes

    def _live_queue(self) -> _Queue | None:
        """The queue buffers once the queue is in use (from ``queue_start_epoch``), else None."""
        if self.queue is None or self.queue_ptr is None or self.queue_count is None:
            return None
        if self.current_epoch < self.queue_start_epoch:
            return None
        return _Queue(self.queue, self.queue_ptr, self.queue_count)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        views, _ = batch
        if len(views) < max(2, self.criterion.num_assigned):
            raise ValueError(
                f"SwAV needs at least 2 crops and {self.criterion.num_assigned} global crops first, "
                f"got {len(views)} views"
            )
        with torch.no_grad():  # unit prototypes: scores are cosine similarities
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        b = len(views[0])
        h, z = self._embeddings(list(views))
        z_views = list(z.chunk(len(views)))
        scores = list(self.prototypes(z).chunk(len(views)))  # V x (B, K)
        codes = self._codes([s.detach() for s in scores], [v.detach() for v in z_views])
        loss = swav_loss(scores, codes, self.criterion.temperature)
        self.log("train/loss", loss, prog_bar=True)
        return {"loss": loss, "features": h[:b].detach()}

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        if self.current_epoch < self.freeze_prototypes_epochs:
            self.prototypes.weight.grad = None  # the optimizer skips them: no update, no weight decay, no moments
