"""Attentive probe: learned queries cross-attend over the frozen patch tokens of a ViT (or the cells of a CNN's
last feature map), then a linear classifier - the evaluation of V-JEPA (Bardes et al., 2024) and AIM
(El-Nouby et al., 2024), which pool what a linear probe on one (CLS or averaged) vector cannot.

    probe = train_attentive_probe(train_maps, train_y, num_classes=10)     # maps: (N, D, h, w) or tokens (N, T, D)
    attentive_probe(train_maps, train_y, test_maps, test_y)                # {"top1": ..., "top5": ...}
    lightning-ssl-eval attentive --config configs/eval/fashion_mnist.yaml  # + a linear probe on the mean token

The head follows AIM's ``AttentionPoolingClassifier`` (ml-aim, ``aim/v1/torch/layers.py``): tokens standardized per
channel (AIM: a BatchNorm without affine parameters; here the training set's statistics), key and value
projections, ``num_queries`` learned queries attending with ``num_heads`` heads, the queries' outputs averaged,
one linear layer. Tokens are computed once and cached (float16) like the kNN features.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ssl.eval.linear import accuracy, linear_probe
from lightning_ssl.eval.probe_training import channel_stats, fit_probe


class AttentiveProbe(nn.Module):
    """Cross-attention pooling of frozen tokens with learned queries, then a linear classifier.

    Args:
        dim: token width D.
        num_classes: output classes.
        num_heads: attention heads; must divide ``dim`` (AIM and V-JEPA use 64-channel heads, e.g. 12 for D=768).
        num_queries: learned query tokens; their pooled outputs are averaged (1 in V-JEPA and AIM).
        mean: (D,) per-channel token mean used to standardize the input (default 0).
        std: (D,) per-channel token std (default 1).
    """

    mean: Tensor  # (D,) buffers: the token standardization
    std: Tensor

    def __init__(
        self,
        dim: int,
        num_classes: int,
        num_heads: int = 4,
        num_queries: int = 1,
        mean: Tensor | None = None,
        std: Tensor | None = None,
    ) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"num_heads must divide the token width {dim}, got {num_heads}")
        if num_queries < 1 or num_classes < 2:
            raise ValueError(f"need num_queries >= 1 and num_classes >= 2, got {num_queries} and {num_classes}")
        self.num_heads = num_heads
        self.register_buffer("mean", torch.zeros(dim) if mean is None else mean.float().clone())
        self.register_buffer("std", torch.ones(dim) if std is None else std.float().clone())
        self.queries = nn.Parameter(torch.randn(1, num_queries, dim) * 0.02)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        """Tokens (B, N, D), or a feature map (B, D, h, w) read as h*w tokens -> logits (B, num_classes)."""
        if tokens.ndim == 4:
            tokens = tokens.flatten(2).transpose(1, 2)
        x = (tokens.float() - self.mean) / self.std
        b, n, d = x.shape
        h = self.num_heads
        q = self.queries.expand(b, -1, -1).reshape(b, -1, h, d // h).transpose(1, 2)  # (B, h, Q, d/h)
        k = self.k(x).reshape(b, n, h, d // h).transpose(1, 2)  # (B, h, N, d/h)
        v = self.v(x).reshape(b, n, h, d // h).transpose(1, 2)
        pooled = F.scaled_dot_product_attention(q, k, v)  # (B, h, Q, d/h)
        pooled = pooled.transpose(1, 2).reshape(b, -1, d).mean(1)  # (B, D)
        return self.linear(pooled)


def train_attentive_probe(
    maps: Tensor,
    labels: Tensor,
    num_classes: int,
    epochs: int = 20,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    num_heads: int = 4,
    num_queries: int = 1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> AttentiveProbe:
    """Fit an ``AttentiveProbe`` on frozen patch features.

    Args:
        maps: (N, D, h, w) feature maps or (N, T, D) tokens, any float dtype (the cache is float16).
        labels: (N,) classes in [0, num_classes).
        num_classes: output classes.
        epochs: passes over the training set (V-JEPA probes for 20).
        lr: AdamW's peak learning rate (cosine decay to 0).
        weight_decay: AdamW's weight decay.
        batch_size: images per step.
        num_heads: attention heads (must divide D).
        num_queries: learned queries.
        seed: initialization and batch order.
        device: where the probe trains.
        progress: show a progress bar.

    Returns:
        The trained probe (eval mode).
    """
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    tokens_last = maps.ndim == 3
    mean, std = channel_stats(maps.transpose(1, 2)[..., None] if tokens_last else maps)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = AttentiveProbe(mean.numel(), num_classes, num_heads, num_queries, mean, std)
    fit_probe(
        probe, maps, labels, F.cross_entropy, epochs, lr, weight_decay, batch_size, seed, device, progress, "attentive"
    )
    return probe


def attentive_probe(
    train_maps: Tensor,
    train_y: Tensor,
    test_maps: Tensor,
    test_y: Tensor,
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
    **kwargs: Any,
) -> dict[str, float]:
    """Train on the training tokens, report top-1/top-5 in [0, 1] on the test tokens (``train_attentive_probe``'s
    keyword arguments pass through)."""
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    probe = train_attentive_probe(train_maps, train_y, num_classes, device=device, **kwargs)
    with torch.no_grad():
        logits = torch.cat([probe(m.to(device)).cpu() for m in test_maps.split(1024)])
    return accuracy(nn.Identity(), logits, test_y, num_classes)


@dataclass
class AttentiveOptions:
    """``lightning-ssl-eval attentive`` options (``--attentive.<name>``).

    Args:
        epochs: passes over the training tokens.
        lr: AdamW's peak learning rate.
        weight_decay: AdamW's weight decay.
        batch_size: images per step.
        num_heads: attention heads (must divide the token width).
        num_queries: learned query tokens.
        max_train_images: train on this many training images (a fixed random subset), None: all.
    """

    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    num_heads: int = 4
    num_queries: int = 1
    max_train_images: int | None = None


def load_or_extract(backbone: nn.Module, loaders: list, device: torch.device, precision: str, cache: Path | None):
    """Patch features ``(test maps, test targets, train maps, train targets)`` of ``loaders`` = [test, train],
    read from ``cache`` if it exists, else extracted and written there."""
    from lightning_ssl.eval.features import extract_patch_features

    if cache is not None and cache.exists():
        print(f"patch features: reusing {cache}")
        d = torch.load(cache, weights_only=True)
        return d["test_f"], d["test_y"], d["train_f"], d["train_y"]
    out: list[Tensor] = []
    for loader, transform in loaders:
        out += extract_patch_features(
            backbone, loader, device, "bf16" if precision == "bf16" else None, True, batch_transform=transform
        )
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp")
        torch.save(dict(zip(("test_f", "test_y", "train_f", "train_y"), out, strict=True)), tmp)
        tmp.replace(cache)
    return tuple(out)


def options_key(options: Any) -> str:
    return hashlib.sha1(json.dumps(asdict(options), sort_keys=True).encode()).hexdigest()[:8]


def run(
    backbone: nn.Module, dm: Any, options: AttentiveOptions, device: torch.device, precision: str, cache: Path | None
) -> tuple[dict[str, Any], list[str], dict[str, float]]:
    """The ``attentive`` protocol: patch tokens of the labelled training and test splits (cached as
    ``<cache>-patches.pt``), an attentive probe and, for comparison on the same tokens, a linear probe on their
    mean. Returns (results section, report lines, metrics to log)."""
    dm.val_bank_size = None
    dm.prepare_data()
    dm.setup("validate")
    test_loader, train_loader = dm.test_dataloader()
    transform = getattr(dm, "on_after_batch_transfer", None)
    path = cache.with_name(cache.name + "-patches.pt") if cache is not None else None
    test_f, test_y, train_f, train_y = load_or_extract(
        backbone, [(test_loader, transform), (train_loader, transform)], device, precision, path
    )
    if options.max_train_images is not None and options.max_train_images < len(train_y):
        keep = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(0))[: options.max_train_images]
        train_f, train_y = train_f[keep], train_y[keep]
    num_classes = getattr(dm, "num_classes", None) or int(max(train_y.max(), test_y.max())) + 1
    kw = {k: v for k, v in asdict(options).items() if k != "max_train_images"}
    acc = attentive_probe(train_f, train_y, test_f, test_y, num_classes, device=device, progress=True, **kw)
    mean_train, mean_test = train_f.float().mean((2, 3)), test_f.float().mean((2, 3))
    lin = linear_probe(mean_train, train_y, mean_test, test_y, num_classes)
    d, h, w = train_f.shape[1:]
    section = {
        **acc,
        "linear_on_mean_token": lin,
        "tokens": h * w,
        "token_dim": d,
        "train_size": len(train_y),
        "test_size": len(test_y),
        "options": asdict(options),
    }
    lines = [
        "",
        f"Attentive probe on {h * w} tokens of {d} channels ({len(train_y)} training images, {options.epochs} "
        f"epochs), against a linear probe on the mean token:",
        "",
        "| probe | top-1 | top-5 |",
        "|---|---|---|",
        f"| attentive ({options.num_queries} query, {options.num_heads} heads) | {100 * acc['top1']:.2f}% | "
        f"{100 * acc['top5']:.2f}% |",
        f"| linear on the mean token | {100 * lin['top1']:.2f}% | {100 * lin['top5']:.2f}% |",
    ]
    metrics = {"eval/attentive_top1": acc["top1"], "eval/linear_mean_token_top1": lin["top1"]}
    return section, lines, metrics
