"""Distributed helpers that are exact under DDP and no-ops in a single process or a notebook.

Contrastive losses need the embeddings of *all* processes as negatives, and the gradient has to flow back
to the process that produced each embedding. ``gather`` does that: forward is an all-gather, backward sums
the incoming gradients over processes (all-reduce) and hands each process the slice of its own rows.
With DDP averaging parameter gradients over W processes this gives exactly the gradient of the global loss
(mean over all rows), which the tests check against one process that holds the whole batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()  # a copy: autograd may hand the same tensor to other branches (gather(x) + y)
        dist.all_reduce(grad)  # every process's loss depends on every row: sum their gradients
        return grad.chunk(dist.get_world_size())[dist.get_rank()]


def gather(x: torch.Tensor, with_grad: bool = True) -> torch.Tensor:
    """Concatenate ``x`` (B, ...) from all processes along dim 0 -> (W*B, ...), rank order.

    All processes must pass the same shape. With ``with_grad`` the result is differentiable w.r.t. the local
    rows; without it the gathered tensor is detached (e.g. MoCo keys, kNN banks).
    """
    if not is_distributed():
        return x
    if with_grad and x.requires_grad:
        return _GatherWithGrad.apply(x)
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.detach().contiguous())
    return torch.cat(out)


class _AllReduceSumWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)  # every process's copy of the loss depends on every process's summand
        return grad


def all_reduce_sum(x: torch.Tensor, with_grad: bool = True) -> torch.Tensor:
    """Sum of ``x`` over processes (a new tensor; ``x`` itself on one process).

    With ``with_grad`` it is differentiable: every process computes the same loss from the sum, the backward
    pass sums that loss's gradient over processes, and DDP's averaging then leaves each process with exactly
    the gradient of the one global loss (the convention of ``gather``). Batch statistics and Barlow Twins'
    cross-correlation over the global batch are built from it."""
    if not is_distributed():
        return x
    if with_grad and x.requires_grad:
        return _AllReduceSumWithGrad.apply(x)
    x = x.detach().clone()
    dist.all_reduce(x)
    return x


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over processes (in place, also returned); identity on one process."""
    if is_distributed():
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x
