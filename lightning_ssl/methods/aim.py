"""AIM: Scalable Pre-training of Large Autoregressive Image Models (El-Nouby et al., ICML 2024).

For each image x (one view: random resized crop at scale 0.4-1, flip), its N patches in raster order:
    S ~ U{1, ..., N - 1}                        a prefix length per image      (modules/prefix_vit.py)
    z = f(x; prefix-causal attention)           (B, N, D)  patches < S see each other, patch k sees patches <= k
    x_hat = head(z)                             (B, N, p*p*C)  position k predicts patch k + 1: an MLP of residual
                                                blocks on each token, no attention (AIM's prediction head)
    loss = mean_b 1/(N - S) sum_{k >= S} MSE(x_hat_{k-1}, norm(x_k))      per-patch normalized pixels (losses/aim.py)
AdamW (0.9, 0.95), weight decay 0.05, warmup + cosine, gradient clip 1.0. The head is dropped downstream, where the
trunk runs with *bidirectional* attention: ``embed`` = the mean of its patch tokens (AIM's simple alternative to
its probe), ``embed_tokens`` = the tokens themselves for AIM's attentive probe (``AttentivePooling``: learned
queries cross-attend to the frozen tokens, then a linear classifier; trained with labels after pre-training).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_ssl.losses.aim import aim_loss
from lightning_ssl.methods.base import SSLMethod
from lightning_ssl.modules.masking import patchify
from lightning_ssl.modules.prefix_vit import PrefixCausalViT, random_prefix_lengths
from lightning_ssl.modules.transformer import MLP
from lightning_ssl.optim import WarmupCosineLR


def aim_adamw(params: Any) -> torch.optim.Optimizer:
    """AIM's pre-training optimizer (El-Nouby et al., appendix, pre-training hyperparameters): AdamW, lr 1e-3 at
    batch 4096, betas (0.9, 0.95), weight decay 0.05."""
    return torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)


class PredictionHead(nn.Module):
    """AIM's pixel head: a linear map to ``width``, ``depth`` pre-norm residual MLP blocks applied to each token on
    its own, a LayerNorm and a linear map to the patch's pixels.

    Args:
        in_dim: the trunk's width D.
        out_dim: pixels per patch, p * p * C.
        width: the head's width (2048 in AIM).
        depth: residual MLP blocks (12 in AIM).
    """

    def __init__(self, in_dim: int, out_dim: int, width: int = 2048, depth: int = 12) -> None:
        super().__init__()
        self.proj_in, self.proj_out = nn.Linear(in_dim, width), nn.Linear(width, out_dim)
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth))
        self.mlps = nn.ModuleList(MLP(width) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, p*p*C)."""
        x = self.proj_in(x)
        for norm, mlp in zip(self.norms, self.mlps, strict=True):
            x = x + mlp(norm(x))
        return self.proj_out(self.norm(x))


class AttentivePooling(nn.Module):
    """AIM's attentive probe (apple/ml-aim ``AttentionPoolingClassifier``): frozen tokens are standardized by a
    BatchNorm without affine parameters, ``num_queries`` learned queries cross-attend to them (keys and values are
    linear maps of the tokens), the queries' outputs are averaged, then a linear classifier.

    Args:
        dim: token width D.
        num_classes: classes of the linear classifier (0: return the pooled (B, D) feature).
        num_heads: attention heads (AIM: the trunk's); must divide ``dim``.
        num_queries: learned queries (1 in AIM).
    """

    def __init__(self, dim: int, num_classes: int = 0, num_heads: int = 8, num_queries: int = 1) -> None:
        super().__init__()
        if dim % num_heads or num_queries < 1 or num_classes < 0:
            raise ValueError(
                f"need dim divisible by num_heads and num_queries >= 1, got {dim}/{num_heads}, {num_queries}"
            )
        self.num_heads = num_heads
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.k, self.v = nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.queries = nn.Parameter(0.02 * torch.randn(1, num_queries, dim))
        self.linear = nn.Linear(dim, num_classes) if num_classes else nn.Identity()

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, N, D) tokens -> (B, num_classes) logits, or (B, D) features when ``num_classes=0``."""
        b, d = tokens.shape[0], tokens.shape[2]
        x = self.bn(tokens.transpose(1, 2)).transpose(1, 2)
        q, k, v = (
            t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
            for t in (self.queries.expand(b, -1, -1), self.k(x), self.v(x))
        )
        pooled = F.scaled_dot_product_attention(q, k, v)  # (B, heads, queries, D / heads)
        return self.linear(pooled.transpose(1, 2).reshape(b, -1, d).mean(1))


class AIM(SSLMethod):
    """AIM (see the module docstring).

    Args:
        backbone: the prefix-causal trunk (``lightning_ssl.modules.prefix_vit.PrefixCausalViT``).
        head_width: the prediction head's width (2048 in AIM).
        head_depth: the prediction head's residual MLP blocks (12 in AIM).
        min_prefix: the smallest prefix length S (1 in AIM); S is uniform in [min_prefix, N - 1].
        norm_pix_loss: per-patch normalized pixel targets (True in AIM).
        optimizer: the optimizer (AdamW (0.9, 0.95), weight decay 0.05).
        scheduler: the LR schedule by optimizer step (warmup + cosine).
    """

    backbone: PrefixCausalViT

    def __init__(
        self,
        backbone: PrefixCausalViT,
        head_width: int = 2048,
        head_depth: int = 12,
        min_prefix: int = 1,
        norm_pix_loss: bool = True,
        optimizer: OptimizerCallable = aim_adamw,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        if not isinstance(backbone, PrefixCausalViT):  # the trunk must take prefix lengths
            raise ValueError(
                f"AIM needs a prefix-causal ViT (lightning_ssl.modules.prefix_vit.PrefixCausalViT), "
                f"got {type(backbone).__name__}"
            )
        if head_width < 1 or head_depth < 0:
            raise ValueError(f"need head_width >= 1 and head_depth >= 0, got {head_width} and {head_depth}")
        random_prefix_lengths(1, backbone.num_patches, min_prefix)  # rejects a prefix that leaves nothing to predict
        super().__init__(backbone, optimizer, scheduler)
        self.save_hyperparameters()
        self.min_prefix, self.norm_pix_loss, self.patch_size = min_prefix, norm_pix_loss, backbone.patch_size
        patch_dim = backbone.patch_size**2 * backbone.in_channels
        self.head = PredictionHead(backbone.num_features, patch_dim, head_width, head_depth)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        views, _ = batch
        x = views[0] if isinstance(views, (list, tuple)) else views
        patches = patchify(x, self.patch_size)  # (B, N, p*p*C), raster order
        prefix = random_prefix_lengths(len(x), patches.shape[1], self.min_prefix).to(x.device)
        pred = self.head(self.backbone.forward_tokens(x, prefix_len=prefix))  # (B, N, p*p*C)
        loss = aim_loss(pred, patches, prefix, self.norm_pix_loss)
        self.log("train/loss", loss, prog_bar=True)
        # the trunk attended prefix-causally; embed attends bidirectionally: the monitors run embed on the view
        return {"loss": loss, "embed_input": x}

    def embed(self, x: Tensor) -> Tensor:
        """(B, D): the mean of the trunk's patch tokens under bidirectional attention."""
        return self.backbone(x)

    def embed_tokens(self, x: Tensor) -> Tensor:
        """(B, N, D): the trunk's patch tokens under bidirectional attention, for ``AttentivePooling``."""
        return self.backbone.forward_tokens(x)
