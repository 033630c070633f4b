"""Optimizer recipe settings for every method, next to ``lr_scaling``: how biases and norm parameters are treated
(``param_groups:``: a learning rate of their own, or weight decay like the weights) and a cosine weight-decay schedule
(``weight_decay_schedule:``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning as L
import torch

from lightning_ssl.optim import cosine_weight_decay, set_weight_decay

if TYPE_CHECKING:
    from lightning_ssl.methods.base import SSLMethod


def _check_optimizer_fn(pl_module: L.LightningModule, what: str, own_lr: bool) -> SSLMethod:
    """``pl_module`` as a method with an injected optimizer (``optimizer_fn``), or a clear error."""
    from lightning_ssl.methods.base import SSLMethod  # the methods are imported by the time a fit starts

    if not isinstance(pl_module, SSLMethod):
        raise ValueError(
            f"{what} needs a method with an injected optimizer (optimizer_fn); {type(pl_module).__name__} has none"
        )
    if own_lr and getattr(pl_module, "base_lr", None) is not None:
        raise ValueError(
            f"{type(pl_module).__name__} sets one lr for every group from base_lr: set {what} to null, or the "
            f"method's base_lr to null and give the optimizer's lr (with lr_scaling.base_batch_size for the rule)"
        )
    return pl_module


class ParamGroups(L.Callback):
    """How the optimizer treats biases and normalization parameters, the group every method's optimizer keeps apart
    (``lightning_ssl.optim.param_groups``: no weight decay, no LARS adaptation). ``no_decay_lr`` gives it a
    learning rate of its own, e.g. Barlow Twins' LARS recipe: 0.2 for the weights and 0.0048 for biases and
    BatchNorm (facebookresearch/barlowtwins main.py), both x batch/256; the warm-up + cosine schedule and
    ``lr_scaling`` act on it as on the weights' rate. ``decay_bias_norm: true`` puts them with the weights instead
    (weight decay and LARS adaptation on every parameter, as SwAV's SGD + LARC does).

    Args:
        no_decay_lr: the group's peak learning rate, in the same units as the optimizer's ``lr`` (per
            ``lr_scaling.base_batch_size`` images when that is set); None (default): the optimizer's ``lr``.
        decay_bias_norm: decay (and LARS-adapt) biases and norm parameters like the weights (default false).
    """

    def __init__(self, no_decay_lr: float | None = None, decay_bias_norm: bool = False) -> None:
        if no_decay_lr is not None and no_decay_lr < 0:
            raise ValueError(f"param_groups.no_decay_lr must be >= 0, got {no_decay_lr}")
        if no_decay_lr is not None and decay_bias_norm:
            raise ValueError("param_groups: no_decay_lr needs the no-decay group; decay_bias_norm true merges it away")
        self.no_decay_lr, self.decay_bias_norm = no_decay_lr, decay_bias_norm
        self._applied = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if (self.no_decay_lr is None and not self.decay_bias_norm) or stage != "fit" or self._applied:
            return
        method = _check_optimizer_fn(pl_module, "param_groups.no_decay_lr", own_lr=self.no_decay_lr is not None)
        make, lr, merge = method.optimizer_fn, self.no_decay_lr, self.decay_bias_norm

        def regroup(groups: Any) -> torch.optim.Optimizer:
            groups = list(groups)
            if merge and all(isinstance(g, dict) and "decayed" in g for g in groups):
                params = [p for g in groups for p in g["params"]]
                return make([{"params": params, "decayed": True, "always_adapt": True}])
            return make([dict(g, lr=lr) if isinstance(g, dict) and g.get("decayed") is False else g for g in groups])

        method.optimizer_fn = regroup
        self._applied = True


class WeightDecaySchedule(L.Callback):
    """Weight decay on a cosine by optimizer step, for any method: the decayed parameter groups (weights; biases
    and norms stay at 0) go from the optimizer's ``weight_decay`` to ``end`` over the run's optimizer steps
    (``trainer.estimated_stepping_batches``), set before every step, so a resumed run continues it exactly.
    DINO and iBOT (0.04 -> 0.4; ``utils.cosine_scheduler``) and I-JEPA (0.04 -> 0.4; ``CosineWDSchedule``) train
    this way. DINO has the same schedule built in (``weight_decay`` / ``weight_decay_end``): use one or the other.

    Args:
        end: the weight decay at the last step; None (default): constant, as the optimizer gives it.
    """

    def __init__(self, end: float | None = None) -> None:
        if end is not None and end < 0:
            raise ValueError(f"weight_decay_schedule.end must be >= 0, got {end}")
        self.end = end

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.end is not None and getattr(pl_module, "weight_decay_end", None) is not None:
            raise ValueError(
                f"{type(pl_module).__name__} schedules its weight decay itself (weight_decay_end): set "
                f"weight_decay_schedule.end to null, or the method's weight_decay_end to null"
            )

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.end is None:
            return
        optimizer = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer wraps the torch one
        start = float(optimizer.defaults.get("weight_decay", 0.0))  # the config's value, not a resumed group's
        wd = cosine_weight_decay(trainer.global_step, int(trainer.estimated_stepping_batches), start, self.end)
        set_weight_decay(optimizer, wd)
        pl_module.log("train/weight_decay", wd)
