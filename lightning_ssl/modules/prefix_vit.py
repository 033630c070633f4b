"""A prefix-causal Vision Transformer, AIM's trunk (El-Nouby et al., ICML 2024; apple/ml-aim
``aim-v1/aim/v1/torch/layers.py``, ``PrefixCausalAttention``).

    tokens = LayerNorm(PatchEmbed(x)) + sincos positions     (B, N, D)  raster order, no CLS token
    tokens = blocks(tokens, mask)                            the language models' pre-norm blocks (transformer.py)
    out    = LayerNorm(tokens)

``mask`` (B, N, N) lets patch k attend to patch j when j <= k (causal) or j < S (the prefix): the first S patches
see each other bidirectionally, the rest causally. Training samples S per image; downstream the same network
runs with full bidirectional attention (no mask), which the prefix objective prepares it for (AIM, sec. 3).
"""

from __future__ import annotations

import torch
from timm.layers import PatchEmbed
from torch import Tensor, nn

from lightning_ssl.modules.backbones import Backbone
from lightning_ssl.modules.spec import Buildable
from lightning_ssl.modules.transformer import Block, init_gpt2
from lightning_ssl.modules.vit import sincos_pos_embed


def random_prefix_lengths(
    batch_size: int, num_patches: int, min_prefix: int = 1, generator: torch.Generator | None = None
) -> Tensor:
    """(B,) prefix lengths S drawn uniformly from {min_prefix, ..., N - 1} (AIM: min_prefix = 1), on the CPU."""
    if not 1 <= min_prefix <= num_patches - 1:
        raise ValueError(f"min_prefix must lie in [1, N - 1] = [1, {num_patches - 1}], got {min_prefix}")
    return torch.randint(min_prefix, num_patches, (batch_size,), generator=generator)


def prefix_causal_mask(prefix_len: Tensor, num_patches: int) -> Tensor:
    """(B,) prefix lengths -> (B, N, N) bool attention mask, True where query k may attend to key j: j <= k or
    j < S."""
    j = torch.arange(num_patches, device=prefix_len.device)
    causal = j[None, :] <= j[:, None]  # (N, N): key j <= query k
    in_prefix = j[None, :] < prefix_len[:, None]  # (B, N): key j is a prefix patch
    return causal[None] | in_prefix[:, None, :]


class PrefixCausalViT(Buildable, Backbone):
    """AIM's trunk: a ViT without CLS token whose attention is prefix-causal when given prefix lengths.

    Args:
        in_channels: image channels.
        image_size: side of the (square) images in pixels; a multiple of ``patch_size``.
        patch_size: side of a patch in pixels (14 in AIM).
        embed_dim: token width D (1536 in AIM-0.6B).
        depth: transformer blocks (24 in AIM-0.6B).
        num_heads: attention heads (12 in AIM-0.6B).
        bias: biases in the linear layers and LayerNorms (AIM: none in the linear layers).
        dropout: dropout in the blocks (0 in AIM).
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 224,
        patch_size: int = 14,
        embed_dim: int = 1536,
        depth: int = 24,
        num_heads: int = 12,
        bias: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if depth < 1 or embed_dim % num_heads:
            raise ValueError(
                f"need depth >= 1 and embed_dim divisible by num_heads, got {depth}, {embed_dim}/{num_heads}"
            )
        self.patch_embed = PatchEmbed(image_size, patch_size, in_channels, embed_dim, norm_layer=nn.LayerNorm)
        self.grid_size: tuple[int, int] = tuple(self.patch_embed.grid_size)
        pos = sincos_pos_embed(embed_dim, self.grid_size, cls_token=False)[None]
        self.register_buffer("pos_embed", pos, persistent=False)  # (1, N, D), fixed
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, bias, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, bias=bias)
        init_gpt2(self.blocks, depth)
        self.in_channels, self.image_size, self.patch_size = in_channels, image_size, patch_size
        self.num_features = self.embed_dim = embed_dim

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def forward_tokens(self, x: Tensor, prefix_len: Tensor | None = None) -> Tensor:
        """Images (B, C, H, W) -> normalized patch tokens (B, N, D); prefix-causal attention with ``prefix_len``
        (B,), bidirectional without."""
        if tuple(x.shape[-3:]) != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(
                f"this ViT takes {self.in_channels}-channel {self.image_size} px images, got {tuple(x.shape[1:])}"
            )
        h = self.patch_embed(x) + self.pos_embed.to(x.dtype)
        mask = None if prefix_len is None else prefix_causal_mask(prefix_len.to(x.device), h.shape[1])
        for block in self.blocks:
            h = block(h, mask=mask)
        return self.norm(h)

    def forward(self, x: Tensor) -> Tensor:
        """Images -> (B, D): the mean of the bidirectional patch tokens."""
        return self.forward_tokens(x).mean(1)
