"""Online linear probe: a linear classifier trained on detached backbone features during pretraining."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_ssl.callbacks.features import step_features
from lightning_ssl.modules.distributed import is_distributed, world_size


class OnlineLinearProbe(L.Callback):
    """Trains ``nn.Linear(num_features, num_classes)`` on the training step's features (``step_features``:
    what the method's ``embed`` gives for the first view; detached, no gradient reaches the backbone) with its own
    AdamW, every ``every_n_steps`` optimizer steps, and evaluates it on val dataloader 0. Logs ``train/probe_loss``,
    ``val/probe_top1`` and ``val/probe_top5`` (plain accuracy over images, like the kNN monitor's) and
    ``val/probe_top1_macro`` (the mean of the per-class accuracies).

    Its cost is one small linear layer per step for methods whose step computes ``embed``'s features anyway; for
    masked-input methods (MAE, SimMIM, BEiT) it runs ``embed`` on the first view, an extra no-grad forward of the
    encoder on every patch: ~70% of an MAE step on Fashion-MNIST in fp32 on a CPU (ours 471 vs 810 img/s of a
    plain loop, ``benchmarks/overhead.py``), so their configs set ``every_n_steps: 32`` (~2%).

    Under DDP the probe's gradients are averaged over processes, so every process keeps the same probe.
    Its weights and optimizer state are saved in the checkpoint. ``num_classes`` defaults to the
    datamodule's. ``enabled=False`` turns it off.

    Args:
        num_classes: Classes of the probe; None: the datamodule's ``num_classes``.
        lr: Learning rate of the probe's AdamW.
        weight_decay: Weight decay of the probe's AdamW.
        enabled: Train and evaluate the probe (True) or not.
        every_n_steps: Train the probe every this many optimizer steps, >= 1 (32 for the masked-input methods).
    """

    def __init__(
        self,
        num_classes: int | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        enabled: bool = True,
        every_n_steps: int = 1,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"probe.every_n_steps must be >= 1, got {every_n_steps}")
        self.num_classes, self.lr, self.weight_decay, self.enabled = num_classes, lr, weight_decay, enabled
        self.every_n_steps = every_n_steps
        self.probe: nn.Linear | None = None  # the probe and its optimizer exist once set up
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending_state: dict | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.enabled or self.probe is not None:
            return
        datamodule = getattr(trainer, "datamodule", None)
        if self.num_classes is None and datamodule is not None:
            self.num_classes = getattr(datamodule, "num_classes", None)
        if not self.num_classes:
            self.enabled = False  # unlabelled data: nothing to probe
            return
        data_classes = getattr(datamodule, "num_classes", None)
        if isinstance(data_classes, int) and data_classes > self.num_classes:
            raise ValueError(
                f"OnlineLinearProbe(num_classes={self.num_classes}) but the data has {data_classes} classes"
            )
        dim = getattr(pl_module, "num_features", None)
        if not isinstance(dim, int):
            raise TypeError(f"{type(pl_module).__name__} has no int num_features to size the probe's input")
        self.probe = nn.Linear(dim, self.num_classes)
        self.optimizer = torch.optim.AdamW(self.probe.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        self.top1 = MulticlassAccuracy(self.num_classes, top_k=1, average="micro")
        self.top1_macro = MulticlassAccuracy(self.num_classes, top_k=1, average="macro")
        self.top5 = MulticlassAccuracy(self.num_classes, top_k=min(5, self.num_classes), average="micro")
        if self._pending_state is not None:
            self._restore(self._pending_state)

    def _parts(self) -> tuple[nn.Linear, torch.optim.Optimizer]:
        if self.probe is None or self.optimizer is None:
            raise RuntimeError("the online probe is used before setup() built it")
        return self.probe, self.optimizer

    def _to(self, device: torch.device) -> None:
        # the model reaches its device after ``setup``: follow it (re-casting any optimizer state)
        probe, optimizer = self._parts()
        if probe.weight.device != device:
            for module in (probe, self.top1, self.top1_macro, self.top5):
                module.to(device)
            optimizer.load_state_dict(optimizer.state_dict())

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch, batch_idx) -> None:
        if not self.enabled or self.probe is None or trainer.global_step % self.every_n_steps != 0:
            return
        labels = batch[1]
        keep = labels >= 0
        if not keep.any():
            return
        features = step_features(trainer, pl_module, outputs)
        if features is None:
            return
        self._to(pl_module.device)
        probe, optimizer = self._parts()
        with torch.enable_grad():
            logits = probe(features.detach().float()[keep])
            loss = F.cross_entropy(logits, labels[keep])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if is_distributed():
            for p in probe.parameters():
                assert p.grad is not None, "the backward pass gives the probe's weight and bias a gradient"
                torch.distributed.all_reduce(p.grad)
                p.grad /= world_size()
        optimizer.step()
        pl_module.log("train/probe_loss", loss.detach(), on_step=True, on_epoch=False)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self.enabled and self.probe is not None:
            self._to(pl_module.device)
            for metric in (self.top1, self.top1_macro, self.top5):
                metric.reset()

    def on_validation_batch_end(self, trainer, pl_module, outputs: Any, batch, batch_idx, dataloader_idx=0) -> None:
        if not self.enabled or self.probe is None or dataloader_idx != 0 or not isinstance(outputs, dict):
            return
        with torch.no_grad():
            logits = self.probe(outputs["features"].float())
        for metric in (self.top1, self.top1_macro, self.top5):
            metric.update(logits, outputs["labels"])

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self.enabled or self.probe is None or trainer.sanity_checking or self.top1.update_count == 0:
            return
        pl_module.log("val/probe_top1", self.top1.compute(), prog_bar=True)
        pl_module.log("val/probe_top1_macro", self.top1_macro.compute())
        pl_module.log("val/probe_top5", self.top5.compute())

    def state_dict(self) -> dict[str, Any]:
        if self.probe is None:
            return {}
        probe, optimizer = self._parts()
        return {"probe": probe.state_dict(), "optimizer": optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.probe is None:
            self._pending_state = state_dict  # restored in setup, once the probe exists
        else:
            self._restore(state_dict)

    def _restore(self, state: dict[str, Any]) -> None:
        probe, optimizer = self._parts()
        probe.load_state_dict(state["probe"])
        optimizer.load_state_dict(state["optimizer"])
        self._pending_state = None
