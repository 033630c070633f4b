"""Synchronized BatchNorm on any backend. ``torch.nn.SyncBatchNorm`` runs only on GPUs; ``DistributedBatchNorm``
computes the batch statistics over all processes with a differentiable all-reduce, so it also works with gloo
on CPUs (and is exact: a 2-process run equals one process holding the whole batch, see the tests).

With the CLI, ``trainer.sync_batchnorm: true`` uses it automatically on CPU; with a Trainer built in Python,
pass ``plugins=[DistributedBatchNormSync()]`` together with ``sync_batchnorm=True``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from lightning.pytorch.plugins.layer_sync import LayerSync
from torch import Tensor, nn

from lightning_ssl.modules.distributed import gather, is_distributed, rank, world_size


class DistributedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch: per-channel sum, sum of squares and count are all-reduced (with
    gradients flowing back through the reduction) before normalizing. Outside training or DDP it is a plain
    BatchNorm."""

    replaced: type[nn.modules.batchnorm._BatchNorm]  # the class convert_batchnorm swapped out (set by _swap)

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {x.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        xf = x.float()
        local = torch.cat([xf.sum(dims), (xf * xf).sum(dims), xf.new_tensor([x.numel() / c])])
        total = dist_fn.all_reduce(local)  # sum over processes, differentiable
        n = total[2 * c]
        mean = total[:c] / n
        var = (total[c : 2 * c] / n - mean * mean).clamp_min(0)  # biased, as BatchNorm normalizes with
        stats = _running_stats(self)
        if stats is not None:
            running_mean, running_var, count = stats
            with torch.no_grad():
                count += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(count)
                running_mean.lerp_(mean.detach().to(running_mean.dtype), m)
                running_var.lerp_((var.detach() * n / (n - 1)).to(running_var.dtype), m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def _running_stats(bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor, Tensor] | None:
    """The running mean, variance and batch count ``bn`` updates in training, or None when it keeps none."""
    mean, var, count = bn.running_mean, bn.running_var, bn.num_batches_tracked
    if not bn.track_running_stats or mean is None or var is None or count is None:
        return None
    return mean, var, count


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm in ``module`` by a ``DistributedBatchNorm`` with the same parameters and
    running statistics (``revert_batchnorm`` undoes it)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, DistributedBatchNorm):
        return _swap(module, DistributedBatchNorm)
    for name, child in module.named_children():
        module.add_module(name, convert_batchnorm(child))
    return module


def revert_batchnorm(module: nn.Module) -> nn.Module:
    if isinstance(module, DistributedBatchNorm):
        return _swap(module, module.replaced)
    for name, child in module.named_children():
        module.add_module(name, revert_batchnorm(child))
    return module


def _swap(bn: nn.modules.batchnorm._BatchNorm, cls: type) -> nn.Module:
    new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    state = bn.state_dict()
    new.load_state_dict(state)
    if state:
        new.to(next(iter(state.values())).device)
    new.train(bn.training)
    if cls is DistributedBatchNorm:
        new.replaced = type(bn)
    return new


class DistributedBatchNormSync(LayerSync):
    """Lightning layer-sync plugin that makes ``sync_batchnorm=True`` work on CPU (gloo) as well as on GPUs."""

    def apply(self, model: nn.Module) -> nn.Module:
        return convert_batchnorm(model)

    def revert(self, model: nn.Module) -> nn.Module:
        return revert_batchnorm(model)


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose batch statistics are computed over ``num_splits`` groups of the batch separately (samples
    j, j + s, j + 2s, ... form group j), as if the batch were spread over ``num_splits`` devices. From the MoCo
    CIFAR-10 demo: on a single device it gives MoCo's shuffle-BN something to shuffle, so a batch's BatchNorm
    statistics cannot leak which key belongs to which query. The running statistics are the mean over groups;
    in eval mode it is a plain BatchNorm.

    Args:
        num_features: Channels C of the input (B, C, H, W).
        num_splits: Groups the batch is split into, >= 1 (8 in the MoCo CIFAR-10 demo); must divide the batch.
        **kwargs: Passed to ``nn.BatchNorm2d`` (``eps``, ``momentum``, ``affine``, ...).
    """

    def __init__(self, num_features: int, num_splits: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        if num_splits < 1:
            raise ValueError(f"num_splits must be >= 1, got {num_splits}")
        self.num_splits = num_splits

    def forward(self, x: Tensor) -> Tensor:
        s = self.num_splits
        if not self.training or s == 1:
            return super().forward(x)
        n, c = x.shape[:2]
        if n % s:
            raise ValueError(f"SplitBatchNorm: a batch of {n} does not split into {s} equal groups")
        stats = _running_stats(self)
        split = (stats[0].repeat(s), stats[1].repeat(s)) if stats is not None else None  # (C * s,) each
        mean, var = split if split is not None else (None, None)
        weight, bias = (self.weight.repeat(s), self.bias.repeat(s)) if self.affine else (None, None)
        out = nn.functional.batch_norm(
            x.reshape(n // s, c * s, *x.shape[2:]),
            mean,
            var,
            weight,
            bias,
            True,
            self.momentum if self.momentum is not None else 0.1,
            self.eps,
        ).view_as(x)
        if stats is not None and split is not None:
            running_mean, running_var, count = stats
            with torch.no_grad():
                running_mean.copy_(split[0].view(s, c).mean(0))
                running_var.copy_(split[1].view(s, c).mean(0))
                count += 1
        return out


def split_batchnorm(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every ``BatchNorm2d`` of ``module`` by a ``SplitBatchNorm`` with the same parameters and statistics."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SplitBatchNorm):
            new = SplitBatchNorm(
                child.num_features,
                num_splits,
                eps=child.eps,
                momentum=child.momentum,
                affine=child.affine,
                track_running_stats=child.track_running_stats,
            )
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            split_batchnorm(child, num_splits)
    return module


@torch.no_grad()
def shuffled_forward(
    fn: Callable[[Tensor], tuple[Tensor, ...]], x: Tensor, split_groups: int = 1
) -> tuple[Tensor, ...]:
    """MoCo's shuffle-BN (He et al., 2020, sec. 3.3) for a key encoder ``fn`` that returns a tuple of tensors
    whose first dimension is the batch: under DDP, ``x`` (B, ...) is gathered, shuffled across the processes with
    one permutation broadcast from rank 0, each process encodes its share, and the outputs come back in the
    original order (this process's rows). On one device with ``split_groups`` > 1 (``SplitBatchNorm``) the batch is
    shuffled across the groups. Otherwise ``fn(x)``. So BatchNorm statistics cannot tell a key's own query."""
    if is_distributed():
        x_all = gather(x, with_grad=False)
        perm = torch.randperm(len(x_all), device=x.device)
        dist.broadcast(perm, src=0)
        outs = fn(x_all[perm.view(world_size(), -1)[rank()]])
        back = torch.argsort(perm).view(world_size(), -1)[rank()]
        return tuple(gather(o.contiguous(), with_grad=False)[back] for o in outs)
    if split_groups > 1:
        perm = torch.randperm(len(x), device=x.device)
        back = torch.argsort(perm)
        return tuple(o[back] for o in fn(x[perm]))
    return fn(x)


def check_shuffle_bn(
    owner: str, key_encoder: nn.Module, shuffle_bn: bool, split_bn: int, batch: int | None, world_size: int
) -> None:
    """Refuse a key encoder whose BatchNorm set-up defeats the shuffle: shuffle-BN with synchronized BatchNorm
    over several processes (the statistics cover the whole global batch, so the shuffle does nothing), or split-BN
    groups that do not divide the batch.

    Args:
        owner: the method's name, for the message (``MoCo``, ``DenseCL``).
        key_encoder: the momentum encoder whose BatchNorm layers are inspected.
        shuffle_bn: whether the method shuffles the batch across processes for the key encoder.
        split_bn: the number of split-BN groups (1: none).
        batch: the per-process batch size, or None when unknown.
        world_size: the number of processes.
    """
    synced = any(isinstance(m, (nn.SyncBatchNorm, DistributedBatchNorm)) for m in key_encoder.modules())
    if shuffle_bn and synced and world_size > 1:
        raise ValueError(
            f"{owner}'s shuffle-BN and synchronized BatchNorm exclude each other: with trainer.sync_batchnorm the key "
            "encoder's statistics cover the whole global batch and the shuffle does nothing. Choose one: "
            "--trainer.sync_batchnorm false (shuffle-BN, the paper's) or --model.init_args.shuffle_bn false."
        )
    if batch is not None and split_bn > 1 and batch % split_bn:
        raise ValueError(f"{owner} split_bn={split_bn} does not divide the batch size {batch}")
