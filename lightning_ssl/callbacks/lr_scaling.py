"""The linear LR scaling rule (Goyal et al., 2017), for every method: lr = base_lr x global batch / base batch."""

from __future__ import annotations

from collections.abc import Iterable

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch.optim import Optimizer


class LinearLRScaling(L.Callback):
    """With ``base_batch_size`` set (256 in SimCLR, BYOL, MoCo v3, DINO and MAE), the optimizer's learning rate in
    the config is read as the rate per ``base_batch_size`` images, and every parameter group starts at
    ``lr x global_batch / base_batch_size`` where global batch = per-process batch x processes x gradient
    accumulation, so a config keeps its recipe when it moves to more devices or a larger batch. The warm-up and
    cosine schedule follow the scaled rate. ``base_batch_size: null`` (default) leaves the lr as written.

    MAE has this rule built in (``MAE.base_lr``): use one or the other.

    Args:
        base_batch_size: Batch size the config's lr is written for (256 in the papers), >= 1; None: off.
    """

    def __init__(self, base_batch_size: int | None = None) -> None:
        if base_batch_size is not None and base_batch_size < 1:
            raise ValueError(f"lr_scaling.base_batch_size must be >= 1, got {base_batch_size}")
        self.base_batch_size = base_batch_size
        self.factor: float | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lightning_ssl.methods.base import SSLMethod  # the methods are imported by the time a fit starts

        if self.base_batch_size is None or stage != "fit" or self.factor is not None:
            return
        if getattr(pl_module, "base_lr", None) is not None:
            raise ValueError(
                f"{type(pl_module).__name__} scales its lr by base_lr already: set lr_scaling.base_batch_size "
                f"to null, or the method's base_lr to null"
            )
        if not isinstance(pl_module, SSLMethod):
            raise ValueError(
                f"lr_scaling needs a method with an injected optimizer (optimizer_fn); "
                f"{type(pl_module).__name__} has none"
            )
        batch = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
        if not isinstance(batch, int):
            raise ValueError("lr_scaling cannot find the batch size: the datamodule has no int batch_size")
        global_batch = batch * trainer.world_size * trainer.accumulate_grad_batches
        self.factor = factor = global_batch / self.base_batch_size
        make = pl_module.optimizer_fn

        def scaled(params: Iterable) -> Optimizer:
            optimizer = make(params)
            for group in optimizer.param_groups:
                group["lr"] *= factor
            return optimizer

        pl_module.optimizer_fn = scaled
        rank_zero_info(f"lr scaling: global batch {global_batch} / {self.base_batch_size}: lr x {factor:g}")
