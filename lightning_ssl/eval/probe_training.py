"""The training loop shared by the token-level probes (attentive, dense): cached frozen features in CPU memory,
random mini-batches moved to the device, AdamW with a cosine learning-rate decay."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TypeVar

import torch
from torch import Tensor, nn

ProbeT = TypeVar("ProbeT", bound=nn.Module)


def fit_probe(
    probe: ProbeT,
    inputs: Tensor,
    targets: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    desc: str = "probe",
) -> ProbeT:
    """Train ``probe`` in place on ``inputs`` (N, ...) (any float dtype; cast to float32 per batch) and
    ``targets`` (N, ...) for ``epochs`` passes; returns it in eval mode on ``device``.

    Args:
        probe: the head to train (its parameters only: the features are frozen and cached).
        inputs: cached features, e.g. (N, D, h, w) feature maps in float16.
        targets: labels (N,) or masks (N, H, W), moved to the device per batch as int64.
        loss_fn: ``loss_fn(probe(batch), targets)``.
        epochs: passes over the data (>= 1).
        lr: AdamW's peak learning rate, decayed to 0 on a cosine over all steps.
        weight_decay: AdamW's decoupled weight decay.
        batch_size: examples per step (capped at N).
        seed: the order of the examples.
        device: where the probe and its batches live.
        progress: show a progress bar.
        desc: the progress bar's label.

    Returns:
        The trained probe, in eval mode.
    """
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")
    if len(inputs) != len(targets) or len(inputs) == 0:
        raise ValueError(f"need as many targets as inputs (and at least one), got {len(inputs)} and {len(targets)}")
    probe.to(device).train()
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(inputs)
    batch_size = min(batch_size, n)
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    it: Iterable[int] = range(total)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=desc, leave=False)
    perm = torch.randperm(n, generator=g)
    for step in it:
        i = step % steps_per_epoch
        if i == 0 and step > 0:
            perm = torch.randperm(n, generator=g)
        idx = perm[i * batch_size : (i + 1) * batch_size]
        x = inputs[idx].to(device, non_blocking=True).float()
        loss = loss_fn(probe(x), targets[idx].to(device, non_blocking=True).long())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return probe.eval()


def channel_stats(maps: Tensor, chunk: int = 2048) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std (D,) of feature maps (N, D, h, w) over images and positions, in float32,
    a chunk at a time (the cache may be float16 and large)."""
    total = torch.zeros(maps.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    count = 0
    for c in maps.split(chunk):
        c = c.double()
        total += c.sum((0, 2, 3))
        squares += (c * c).sum((0, 2, 3))
        count += c.shape[0] * c.shape[2] * c.shape[3]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    return mean.float(), std.float().clamp_min(1e-6)
