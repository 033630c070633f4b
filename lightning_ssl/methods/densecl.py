"""DenseCL: Dense Contrastive Learning for Self-Supervised Visual Pre-Training (Wang, Zhang, Shen, Kong & Li,
CVPR 2021; code: WXinlong/DenseCL, openselfsup/models/densecl.py).

MoCo v2 with a second, dense branch on the backbone's feature map:
    F, h = f(x)                       backbone: feature map (B, C, h, w) and its pooled features (kept downstream)
    q = g(h)                          global head: 2-layer MLP (MoCo v2's)
    q_dense = g_dense(F)              dense head: 1x1 conv, ReLU, 1x1 conv: one projection per feature-map cell
    k, k_dense, F_k                   the same from the key view through the teacher (momentum copy, no gradient)
    match(s) = argmax_t cos(F_s, F_k,t)              each query cell's positive: the most similar key cell
    loss = (1 - lambda) InfoNCE(q, k, queue) + lambda mean_s InfoNCE(q_dense_s, k_dense_match(s), dense queue)
    enqueue(k); enqueue(mean over cells of k_dense)  two ring buffers, saved in checkpoints
    teacher <- m teacher + (1 - m) student           after every optimizer step (m = 0.999)
lambda = 0.5, temperature 0.2 (losses/densecl.py). The dense positives come from the *backbone's* features, so the
dense head learns to agree across views where the two crops see the same thing.

The backbone must give a spatial feature map (``modules.backbones.feature_map``: SmallCNN, ResNet, ViT patch
grids, timm models); others are refused when the method is built. Under DDP the keys are encoded with MoCo's
shuffle-BN and the keys of all processes are enqueued; on one device ``split_bn`` > 1 computes BatchNorm over
groups and shuffles the keys across them (as ``MoCo``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_ssl.losses.densecl import check_dense_weight, densecl_terms
from lightning_ssl.methods.base import MomentumMethod
from lightning_ssl.modules.backbones import Backbone, feature_map, feature_map_channels
from lightning_ssl.modules.heads import DenseProjectionHead, ProjectionHead
from lightning_ssl.modules.momentum import make_teacher
from lightning_ssl.modules.queue import check_queue_size, enqueue
from lightning_ssl.modules.sync_bn import check_shuffle_bn, shuffled_forward, split_batchnorm
from lightning_ssl.optim import WarmupCosineLR


class DenseCL(MomentumMethod):
    """DenseCL: MoCo v2 plus a dense contrastive term between matched feature-map cells of the two views.

    Args:
        backbone: Image encoder with a spatial feature map (``feature_map``); ``embed`` returns its pooled features.
        proj_hidden_dim: Hidden width of both heads (the paper, ResNet-50: 2048).
        proj_dim: Output dimension of both heads and of the queues' keys (the paper: 128).
        queue_size: Keys K in each of the two queues (the paper: 65536); at least one global batch.
        temperature: InfoNCE temperature tau > 0 of both terms (the paper: 0.2).
        dense_weight: lambda in [0, 1], the dense term's weight; the global term gets 1 - lambda (the paper: 0.5).
        momentum: Teacher EMA momentum m in [0, 1] at the start (the paper: 0.999).
        momentum_end: m at the end of training, cosine schedule (the paper: constant, 0.999).
        shuffle_bn: MoCo's shuffle-BN for the keys (across processes under DDP, across ``split_bn`` groups on one
            device); excludes synchronized BatchNorm.
        split_bn: BatchNorm statistics over this many groups of the batch on one device (>= 1; 1: off).
        optimizer: Optimizer factory (the paper: SGD, lr 0.03 at batch 256, momentum 0.9, weight decay 1e-4).
        scheduler: LR schedule factory (the paper: cosine, no warmup).
    """

    queue: Tensor  # (K, P) global keys of earlier batches
    queue_ptr: Tensor
    dense_queue: Tensor  # (K, P) pooled dense keys of earlier batches
    dense_queue_ptr: Tensor

    def __init__(
        self,
        backbone: Backbone,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        queue_size: int = 65536,
        temperature: float = 0.2,
        dense_weight: float = 0.5,
        momentum: float = 0.999,
        momentum_end: float = 0.999,
        shuffle_bn: bool = True,
        split_bn: int = 1,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        super().__init__(backbone, optimizer, scheduler, momentum, momentum_end)
        self.save_hyperparameters()
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if split_bn < 1:
            raise ValueError(f"split_bn must be >= 1, got {split_bn}")
        check_dense_weight(dense_weight)
        try:
            size = getattr(backbone, "in_channels", 3), getattr(backbone, "image_size", 32)
            channels = feature_map_channels(backbone, *size)
        except TypeError as e:
            raise TypeError(f"DenseCL needs a backbone with a spatial feature map: {e}") from e
        self.temperature, self.dense_weight = temperature, dense_weight
        self.shuffle_bn, self.split_bn = shuffle_bn, split_bn
        if split_bn > 1:
            split_batchnorm(self.backbone, split_bn)
        self.projector = ProjectionHead(self.num_features, proj_hidden_dim, proj_dim, num_layers=2, batch_norm=False)
        self.dense_projector = DenseProjectionHead(channels, proj_hidden_dim, proj_dim)
        self.teacher_backbone = make_teacher(self.backbone)
        self.teacher_projector = make_teacher(self.projector)
        self.teacher_dense_projector = make_teacher(self.dense_projector)
        for name in ("queue", "dense_queue"):
            self.register_buffer(name, F.normalize(torch.randn(queue_size, proj_dim), dim=1))
            self.register_buffer(f"{name}_ptr", torch.zeros((), dtype=torch.long))

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [
            (self.backbone, self.teacher_backbone),
            (self.projector, self.teacher_projector),
            (self.dense_projector, self.teacher_dense_projector),
        ]

    def on_fit_start(self) -> None:
        super().on_fit_start()
        batch = getattr(getattr(self.trainer, "datamodule", None), "batch_size", None)
        check_shuffle_bn(
            "DenseCL", self.teacher_backbone, self.shuffle_bn, self.split_bn, batch, self.trainer.world_size
        )
        check_queue_size("DenseCL", len(self.queue), batch, self.trainer.world_size)

    @torch.no_grad()
    def _teacher(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        fmap, pooled = feature_map(self.teacher_backbone, x)
        return self.teacher_projector(pooled), self.teacher_dense_projector(fmap), fmap

    def keys(self, x: Tensor) -> tuple[Tensor, ...]:
        """The teacher's global keys (B, P), dense keys (B, P, h, w) and feature map (B, C, h, w) of ``x``."""
        return shuffled_forward(self._teacher, x, self.split_bn) if self.shuffle_bn else self._teacher(x)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        (x_q, x_k), _ = batch
        f_q, h = feature_map(self.backbone, x_q)
        q, q_dense = self.projector(h), self.dense_projector(f_q)
        k, k_dense, f_k = self.keys(x_k)
        global_term, dense_term = densecl_terms(
            q, k, q_dense, k_dense, f_q.detach(), f_k, self.queue.clone(), self.dense_queue.clone(), self.temperature
        )  # clones: the keys enqueued below must not be their own negatives
        loss = (1 - self.dense_weight) * global_term + self.dense_weight * dense_term
        enqueue(self.queue, self.queue_ptr, F.normalize(k.float(), dim=1))
        enqueue(self.dense_queue, self.dense_queue_ptr, F.normalize(k_dense.float().flatten(2).mean(2), dim=1))
        self.log_dict({"train/global_loss": global_term, "train/dense_loss": dense_term})
        self.log("train/loss", loss, prog_bar=True)
        return {"loss": loss, "features": h.detach()}
