"""Linear probe and few-shot classification on frozen (cached) features.

The features are computed once (``extract_features``); the probe is a linear layer on standardized features,
trained with AdamW and a cosine schedule in plain PyTorch, which takes seconds on a CPU. Accuracy comes from
torchmetrics. Few-shot draws exactly ``n`` labelled examples per class for each seed and reports mean and std
over seeds of the probe's top-1 on the whole test set.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy


class LinearProbe(nn.Module):
    """Standardize features with training-set statistics, then one linear layer.

    Args:
        mean: Per-dimension mean of the training features (D,).
        std: Per-dimension std of the training features (D,).
        num_classes: Output classes.
    """

    mean: Tensor  # buffers
    std: Tensor

    def __init__(self, mean: Tensor, std: Tensor, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = nn.Linear(mean.numel(), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear((x - self.mean) / self.std)


def train_linear_probe(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    epochs: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 1024,
    min_steps: int = 300,
    seed: int = 0,
    progress: bool = False,
) -> LinearProbe:
    """Fit a ``LinearProbe`` on (N, D) ``features`` with labels (N,) in [0, num_classes)."""
    if len(features) != len(labels) or len(features) == 0:
        raise ValueError(f"need as many labels as features (and at least one), got {len(features)} and {len(labels)}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes})")
    g = torch.Generator().manual_seed(seed)
    features = features.float()
    mean, std = features.mean(0), features.std(0, unbiased=False).clamp_min(1e-6)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = LinearProbe(mean, std, num_classes)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(features)
    batch_size = min(batch_size, n)
    steps_per_epoch = math.ceil(n / batch_size)
    total = max(epochs * steps_per_epoch, min_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    it: Iterable[int] = range(total)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="linear probe", leave=False)
    perm = torch.randperm(n, generator=g)
    for step in it:
        i = step % steps_per_epoch
        if i == 0 and step > 0:
            perm = torch.randperm(n, generator=g)
        idx = perm[i * batch_size : (i + 1) * batch_size]
        loss = F.cross_entropy(probe(features[idx]), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return probe.eval()


@torch.no_grad()
def accuracy(probe: nn.Module, features: Tensor, labels: Tensor, num_classes: int) -> dict[str, float]:
    """Top-1 and top-5 accuracy in [0, 1] (micro average, torchmetrics)."""
    logits = torch.cat([probe(f) for f in features.float().split(4096)])
    top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")(logits, labels).item()
    top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")(logits, labels).item()
    return {"top1": top1, "top5": top5}


def linear_probe(
    train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor, num_classes: int | None = None, **kwargs
) -> dict[str, float]:
    """Train on the training features, report top-1/top-5 on the test features."""
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    return accuracy(train_linear_probe(train_f, train_y, num_classes, **kwargs), test_f, test_y, num_classes)


def sample_few_shot(labels: Tensor, shots: int, seed: int, num_classes: int | None = None) -> Tensor:
    """Indices of exactly ``shots`` examples of every class, drawn with ``seed``."""
    num_classes = num_classes or int(labels.max()) + 1
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in range(num_classes):
        idx = (labels == c).nonzero().flatten()
        if len(idx) < shots:
            raise ValueError(f"class {c} has {len(idx)} labelled examples, fewer than {shots} shots")
        picked.append(idx[torch.randperm(len(idx), generator=g)[:shots]])
    return torch.cat(picked)


class FewShotResult(TypedDict):
    """Top-1 of the few-shot probes of one shot count: mean and std over the draws, and each draw's."""

    mean: float
    std: float
    runs: list[float]


def few_shot(
    train_f: Tensor,
    train_y: Tensor,
    test_f: Tensor,
    test_y: Tensor,
    shots: Sequence[int] = (1, 5, 10, 100),
    seeds: int = 5,
    num_classes: int | None = None,
    **kwargs,
) -> dict[int, FewShotResult]:
    """For each n in ``shots``: top-1 of a linear probe trained on n examples per class, over ``seeds`` draws."""
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    out: dict[int, FewShotResult] = {}
    for n in shots:
        accs = []
        for seed in range(seeds):
            idx = sample_few_shot(train_y, n, seed, num_classes)
            probe = train_linear_probe(train_f[idx], train_y[idx], num_classes, seed=seed, **kwargs)
            accs.append(accuracy(probe, test_f, test_y, num_classes)["top1"])
        t = torch.tensor(accs)
        out[n] = {"mean": t.mean().item(), "std": t.std(unbiased=False).item(), "runs": accs}
    return out


def few_shot_table(results: dict[int, FewShotResult]) -> str:
    lines = ["| shots per class | top-1 (mean ± std) | runs |", "|---|---|---|"]
    for n, r in results.items():
        lines.append(f"| {n} | {100 * r['mean']:.2f}% ± {100 * r['std']:.2f} | {len(r['runs'])} |")
    return "\n".join(lines)
