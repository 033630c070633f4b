"""Synchronized BatchNorm on any backend. ``torch.nn.SyncBatchNorm`` runs only on GPUs; ``DistributedBatchNorm``
computes the batch statistics over all processes with a differentiable all-reduce, so it also works with gloo
on CPUs (and is exact: a 2-process run equals one process holding the whole batch, see the tests).

With the CLI, ``trainer.sync_batchnorm: true`` uses it automatically on CPU; with a Trainer built in Python,
pass ``plugins=[DistributedBatchNormSync()]`` together with ``sync_batchnorm=True``.
"""

from __future__ import annotations

import torch
import torch.distributed.nn.functional as dist_fn
from lightning.pytorch.plugins.layer_sync import LayerSync
from torch import Tensor, nn

from lightning_ssl.modules.distributed import is_distributed


class DistributedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch: per-channel sum, sum of squares and count are all-reduced (with
    gradients flowing back through the reduction) before normalizing. Outside training or DDP it is a plain
    BatchNorm."""

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
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                self.running_var.lerp_((var.detach() * n / (n - 1)).to(self.running_var.dtype), m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


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
