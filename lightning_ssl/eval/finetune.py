"""Supervised training of a pretrained backbone (image or text) with a new linear head: fine-tuning, or linear
evaluation with the backbone frozen. Runs through the same CLI as pretraining (``lightning-ssl fit --config
configs/eval/finetune_fashion_mnist.yaml``), with DDP, mixed precision, W&B and resume for free.

Layer-wise learning-rate decay (BEiT/MAE fine-tuning): with ``layer_decay=d`` the head gets the base lr, the
last transformer block d x lr, the one before d^2 x lr, ... down to the patch embedding (timm's
``param_groups_layer_decay`` assigns the layers; any timm model that defines ``group_matcher`` works).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_ssl.methods.base import SSLMethod
from lightning_ssl.modules.backbones import Backbone
from lightning_ssl.optim import WarmupCosineLR, param_groups, with_schedule


class Classifier(SSLMethod):
    """A pretrained backbone with a linear head, trained on labels: full fine-tuning or a frozen-backbone probe.

    Args:
        backbone: The pretrained encoder (``CheckpointBackbone``, ``TimmBackbone``, ... or any ``nn.Module``):
            images (B, C, H, W) -> features (B, D).
        num_classes: Classes of the head; None: the datamodule's ``num_classes``.
        freeze_backbone: Train the head only (linear probing).
        layer_decay: Layer-wise learning-rate decay for ViTs, in (0, 1] (0.75 in MAE's ViT-B fine-tuning, 0.65 in
            BEiT's); None: one learning rate for all.
        head_batch_norm: A non-affine BatchNorm before the linear head (MAE's linear-probing recipe).
        label_smoothing: Label smoothing of the cross-entropy, in [0, 1) (0.1 in MAE's fine-tuning).
        optimizer: Factory called with the parameter groups; default AdamW.
        scheduler: Factory called with the optimizer, stepped every optimizer step; default ``WarmupCosineLR``.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int | None = None,
        freeze_backbone: bool = False,
        layer_decay: float | None = None,
        head_batch_norm: bool = False,
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        super().__init__(backbone, optimizer, scheduler)
        self.save_hyperparameters()
        if num_classes is None:  # the CLI fills it in from the datamodule
            raise ValueError("num_classes is not set and the datamodule does not say how many classes it has")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if layer_decay is not None and not 0 < layer_decay <= 1:
            raise ValueError(f"layer_decay must lie in (0, 1], got {layer_decay}")
        self.freeze_backbone, self.layer_decay, self.label_smoothing = freeze_backbone, layer_decay, label_smoothing
        # MAE's linear probing puts a BatchNorm without affine parameters before the head (He et al. 2021, A.2)
        norm = nn.BatchNorm1d(self.num_features, affine=False) if head_batch_norm else nn.Identity()
        classifier = nn.Linear(self.num_features, num_classes)
        nn.init.trunc_normal_(classifier.weight, std=0.01)
        nn.init.zeros_(classifier.bias)
        self.head = nn.Sequential(norm, classifier)
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        self.val_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))

    def on_fit_start(self) -> None:
        super().on_fit_start()
        n = getattr(getattr(self.trainer, "datamodule", None), "num_classes", None)
        if isinstance(n, int) and n != self.head[-1].out_features:
            raise ValueError(
                f"the head has {self.head[-1].out_features} classes but the data has {n} (num_classes mismatch)"
            )

    def on_train_epoch_start(self) -> None:
        if self.freeze_backbone:
            self.backbone.eval()  # frozen means frozen BatchNorm statistics too

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        if isinstance(x, (list, tuple)) and isinstance(x[0], Tensor):
            x = x[0]  # a one-view preset yields [view]
        loss = F.cross_entropy(self(x), y, label_smoothing=self.label_smoothing)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        x, y = batch
        features = self.embed(x)
        if dataloader_idx == 0:
            logits = self.head(features)
            self.val_top1.update(logits, y)
            self.val_top5.update(logits, y)
            self.log("val/top1", self.val_top1, prog_bar=True, add_dataloader_idx=False)
            self.log("val/top5", self.val_top5, add_dataloader_idx=False)
        return {"features": features, "labels": y}

    def configure_optimizers(self) -> Any:
        if self.layer_decay is None or self.freeze_backbone:
            groups = param_groups([self.head] if self.freeze_backbone else [self])
        else:
            from timm.optim import param_groups_layer_decay

            inner = getattr(self.backbone, "model", self.backbone)
            if not hasattr(inner, "group_matcher"):
                raise ValueError(f"layer_decay needs a timm model with group_matcher, not {type(inner).__name__}")
            groups = param_groups_layer_decay(inner, weight_decay=1.0, layer_decay=self.layer_decay)
            for g in groups:  # decayed groups take the optimizer's own weight decay; biases/norms get none
                if g["weight_decay"] == 1.0:
                    del g["weight_decay"]
            groups += param_groups([self.head])
        optimizer = self.optimizer_fn(groups)
        for g in optimizer.param_groups:  # layer-wise decay: scale each group's lr once, the schedule follows
            g["lr"] *= g.get("lr_scale", 1.0)
        return with_schedule(optimizer, self.scheduler_fn, self.trainer)
