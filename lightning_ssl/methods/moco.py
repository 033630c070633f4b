"""MoCo v2: Momentum Contrast (He et al., CVPR 2020; v2: Chen et al., 2020, arXiv:2003.04297).

    q = g_q(f_q(x_q))                      query encoder (backbone + 2-layer MLP head), trained
    k = g_k(f_k(x_k))                      key encoder: momentum copy of the query encoder, no gradient
    loss = InfoNCE(q, k+, queue)           the key of the same image is the positive, the K keys in the
                                           queue (from earlier batches) are the negatives
    enqueue(k); dequeue the oldest         the queue is a ring buffer, saved in checkpoints
    f_k <- m f_k + (1 - m) f_q             after every optimizer step (m = 0.999)

Under DDP the keys of all processes are enqueued, and "shuffling BN" (sec. 3.3) forwards the keys through the
key encoder in a batch order shuffled across processes, so BatchNorm cannot leak which key is the positive. On one
device, ``split_bn`` > 1 computes BatchNorm statistics over that many groups of the batch (the MoCo CIFAR-10 demo's
split-BN) and the keys are shuffled across the groups. Shuffle-BN and synchronized BatchNorm exclude each other:
with ``trainer.sync_batchnorm`` the statistics cover the whole global batch and the shuffle does nothing, so that
combination is refused.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_ssl.losses.info_nce import info_nce_loss
from lightning_ssl.methods.base import MomentumMethod
from lightning_ssl.modules.backbones import Backbone
from lightning_ssl.modules.heads import ProjectionHead
from lightning_ssl.modules.momentum import make_teacher
from lightning_ssl.modules.queue import check_queue_size, enqueue
from lightning_ssl.modules.sync_bn import check_shuffle_bn, shuffled_forward, split_batchnorm
from lightning_ssl.optim import WarmupCosineLR


class MoCo(MomentumMethod):
    """MoCo v2: a query encoder, its momentum copy as key encoder and a queue of negatives.

    Args:
        backbone: The encoder f: images (B, C, H, W) -> features (B, D), the representation kept for downstream
            use (``embed``). A project backbone (``SmallCNN``, ``ResNet``, ``ViT``, ``TimmBackbone``, ...) or any
            ``nn.Module`` given by ``class_path``.
        proj_hidden_dim: Hidden width of the 2-layer MLP head (2048 in MoCo v2).
        proj_dim: Output width of the head, the embedding compared by the loss (128 in MoCo v2).
        queue_size: Number K of negative keys kept in the queue (65536 on ImageNet; 4096 in the CIFAR-10 demo).
            Need not be a multiple of the batch size; must be at least the global batch.
        temperature: InfoNCE temperature tau, > 0 (0.07 in MoCo v1, 0.2 in MoCo v2).
        momentum: EMA momentum of the teacher (target) network at the first optimizer step, in [0, 1];
            0.999 in the paper.
        momentum_end: Momentum at the last optimizer step, reached on a cosine schedule by optimizer step
            (correct under gradient accumulation and resume); equal to ``momentum`` for a constant one.
        symmetric: Also compute the loss with the views swapped (the MoCo CIFAR-10 demo's symmetric loss);
            doubles the key-encoder work.
        shuffle_bn: Shuffle the keys' batch order across processes before the key encoder (sec. 3.3), so
            BatchNorm cannot leak which key is the positive. Refused together with ``trainer.sync_batchnorm``.
        split_bn: On one device, compute BatchNorm statistics over this many groups of the batch (split-BN, the
            single-GPU stand-in for shuffle-BN; 8 in the MoCo CIFAR-10 demo); 1: off. Must divide the batch.
        optimizer: Factory called with the parameter groups (no weight decay on biases and norm parameters);
            from a config, the ``class_path`` / ``init_args`` of any ``torch.optim`` optimizer. Default AdamW.
        scheduler: Factory called with the optimizer, stepped every optimizer step. Default ``WarmupCosineLR``
            (linear warm-up, then cosine over ``trainer.estimated_stepping_batches``); None: a constant LR.
    """

    # buffers, saved in checkpoints
    queue: Tensor  # (K, d) the negative keys
    queue_ptr: Tensor  # () where the next keys are written

    def __init__(
        self,
        backbone: Backbone,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        queue_size: int = 65536,
        temperature: float = 0.2,
        momentum: float = 0.999,
        momentum_end: float = 0.999,
        symmetric: bool = False,
        shuffle_bn: bool = True,
        split_bn: int = 1,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        super().__init__(backbone, optimizer, scheduler, momentum, momentum_end)
        self.save_hyperparameters()
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if split_bn < 1:
            raise ValueError(f"split_bn must be >= 1, got {split_bn}")
        self.temperature, self.symmetric, self.shuffle_bn, self.split_bn = temperature, symmetric, shuffle_bn, split_bn
        if split_bn > 1:
            split_batchnorm(self.backbone, split_bn)
        self.projector = ProjectionHead(self.num_features, proj_hidden_dim, proj_dim, num_layers=2, batch_norm=False)
        self.teacher_backbone, self.teacher_projector = make_teacher(self.backbone), make_teacher(self.projector)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.teacher_backbone), (self.projector, self.teacher_projector)]

    def on_fit_start(self) -> None:
        super().on_fit_start()
        batch = getattr(getattr(self.trainer, "datamodule", None), "batch_size", None)
        check_shuffle_bn("MoCo", self.teacher_backbone, self.shuffle_bn, self.split_bn, batch, self.trainer.world_size)
        check_queue_size("MoCo", len(self.queue), batch, self.trainer.world_size)

    @torch.no_grad()
    def keys(self, x: Tensor) -> Tensor:
        """Normalized keys from the momentum encoder (with shuffled BN under DDP, or across split-BN groups)."""

        def encode(v: Tensor) -> tuple[Tensor]:
            return (self.teacher_projector(self.teacher_backbone(v)),)

        (k,) = shuffled_forward(encode, x, self.split_bn) if self.shuffle_bn else encode(x)
        return F.normalize(k.float(), dim=1)

    def enqueue(self, keys: Tensor) -> None:
        """Write the keys of all processes into the ring buffer at ``queue_ptr`` (wrapping around)."""
        enqueue(self.queue, self.queue_ptr, keys)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        (x_q, x_k), _ = batch
        h = self.backbone(x_q)
        q = self.projector(h)
        k = self.keys(x_k)
        negatives = self.queue.clone()  # the keys enqueued below must not be their own negatives
        loss = info_nce_loss(q, k, self.temperature, negatives, in_batch_negatives=False)
        if self.symmetric:  # the symmetrized variant: swap the roles of the two views too
            k2 = self.keys(x_q)
            loss = (
                loss
                + info_nce_loss(
                    self.projector(self.backbone(x_k)), k2, self.temperature, negatives, in_batch_negatives=False
                )
            ) / 2
            self.enqueue(k2)
        self.enqueue(k)
        self.log("train/loss", loss, prog_bar=True)
        return {"loss": loss, "features": h.detach()}
