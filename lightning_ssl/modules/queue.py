"""Queues of embeddings from earlier batches: MoCo's negatives, NNCLR's support set, SwAV's stored features.

A queue is a ring buffer: a (K, ...) tensor and a pointer (a 0-dim long tensor), both registered as buffers on the
method so they are saved in checkpoints and a resumed run continues with the same queue. ``enqueue`` writes the
rows of *all* processes (rank order) at the pointer and wraps around, so K need not be a multiple of the batch
size and every process holds the same queue.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_ssl.modules.distributed import gather


@torch.no_grad()
def enqueue(queue: Tensor, ptr: Tensor, items: Tensor, gather_distributed: bool = True) -> None:
    """Write ``items`` (B, ...) of every process into the ring buffer ``queue`` (K, ...) from position ``ptr``,
    wrapping around, and advance ``ptr`` (in place) by the number of rows written."""
    items = gather(items, with_grad=False) if gather_distributed else items.detach()
    n, size = len(items), len(queue)
    if n > size:
        raise ValueError(f"{n} keys do not fit in a queue of {size}")
    idx = (ptr + torch.arange(n, device=queue.device)) % size
    queue[idx] = items.to(queue.dtype)
    ptr.copy_((ptr + n) % size)


def check_queue_size(owner: str, queue_size: int, batch_size: int | None, world_size: int) -> None:
    """A queue must hold at least one global batch, or the rows enqueued in one step overwrite each other."""
    if batch_size is not None and batch_size * world_size > queue_size:
        raise ValueError(
            f"{owner} queue_size={queue_size} is smaller than the global batch ({batch_size} x "
            f"{world_size} processes): keys would overwrite each other"
        )
