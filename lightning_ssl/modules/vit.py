"""A Vision Transformer backbone for MAE, DINO and iBOT, built on timm's ``VisionTransformer``.

``ViT`` wraps ``timm.models.vision_transformer.VisionTransformer`` (Dosovitskiy et al., 2021) and adds what the
self-supervised methods need on top of timm's blocks:

* ``forward(x) -> (B, D)``: the pooled feature (CLS token or mean of patch tokens), so it is an ordinary
  backbone (``num_features``, ``in_channels``, ``image_size``) for kNN, probes and the other methods;
* ``forward_tokens(x, ids_keep=None, mask=None) -> (B, 1 + K, D)``: all tokens after the final norm; with
  ``ids_keep`` (B, K) only those patches are encoded (MAE), with ``mask`` (B, N) the masked patches are replaced
  by a learnable mask token before the blocks (iBOT student input; call ``add_mask_token`` first);
* ``last_attention(x) -> (B, heads, h, w)``: the CLS -> patch self-attention of the last block (DINO's maps);
* any input size whose sides are multiples of the patch size: the positional embedding is interpolated
  (bicubic, as in DINO) for other grids, e.g. DINO's local crops.

``pos_embed="sincos"`` uses MAE's fixed 2-D sine-cosine positional embedding instead of a learned one.
``num_registers`` > 0 adds register tokens (Darcet et al., "Vision Transformers Need Registers", ICLR 2024): learned
tokens after the CLS token that take part in attention and are dropped from every output (tokens, pooled features,
attention maps), so the token layout every method sees stays (B, 1 + K, D).
Sizes: ViT-S/16 = (embed_dim 384, depth 12, heads 6); ViT-B/16 = (768, 12, 12); ViT-Ti = (192, 12, 3).
"""

from __future__ import annotations

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from lightning_ssl.modules.backbones import Backbone
from lightning_ssl.modules.masking import gather_tokens
from lightning_ssl.modules.spec import Buildable


def sincos_pos_embed(dim: int, grid: tuple[int, int], cls_token: bool = True) -> Tensor:
    """Fixed 2-D sine-cosine positional embedding (MAE, ``get_2d_sincos_pos_embed``): (1 + h*w, dim) with a
    zero row for the CLS token. Half the channels encode the row, half the column."""
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos embedding needs embed_dim divisible by 4, got {dim}")
    h, w = grid
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0))  # (D/4,)

    def embed_1d(pos: Tensor) -> Tensor:  # (M,) -> (M, D/2)
        out = pos.double()[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    emb = torch.cat([embed_1d(cols.flatten()), embed_1d(rows.flatten())], dim=1)  # MAE's (w, h) order
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb])
    return emb.float()


class ViT(Buildable, Backbone):
    """timm ``VisionTransformer`` with a CLS token, as a backbone (see the module docstring).

    Args:
        in_channels: image channels.
        image_size: side of the (square) training images in pixels; a multiple of ``patch_size``.
        patch_size: side of a patch in pixels (16 in ViT-S/16 and ViT-B/16, 14 in DINOv2).
        embed_dim: token width D (384 ViT-S, 768 ViT-B).
        depth: number of transformer blocks (12 for ViT-S and ViT-B).
        num_heads: attention heads (6 ViT-S, 12 ViT-B).
        mlp_ratio: hidden width of the MLPs over D (4 in ViT).
        qkv_bias: bias in the query/key/value projection.
        drop_path_rate: stochastic depth rate, rising linearly to this value over the blocks (0.1 in DINO ViT-S).
        pool: ``"token"`` (the CLS token) or ``"avg"`` (mean of the patch tokens) as ``forward``'s feature.
        pos_embed: ``"learned"`` or ``"sincos"`` (MAE's fixed 2-D sine-cosine embedding).
        num_registers: register tokens after the CLS token (0: none; 4 in Darcet et al. and DINOv2's reg4
            models). Their position rows (timm's layout, one per prefix token) are zero with ``"sincos"``.
    """

    export_inner = "model"  # export_backbone writes the timm model's state dict (see export_recipe)

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        pool: str = "token",
        pos_embed: str = "learned",
        num_registers: int = 0,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if pool not in ("token", "avg"):
            raise ValueError(f"pool must be 'token' (CLS) or 'avg' (mean of patch tokens), got {pool!r}")
        if pos_embed not in ("learned", "sincos"):
            raise ValueError(f"pos_embed must be 'learned' or 'sincos', got {pos_embed!r}")
        if num_registers < 0:
            raise ValueError(f"num_registers must be >= 0, got {num_registers}")
        self.model_kwargs = dict(
            img_size=image_size,
            patch_size=patch_size,
            in_chans=in_channels,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop_path_rate=drop_path_rate,
            global_pool=pool,
            fc_norm=False,
            num_classes=0,
            dynamic_img_size=True,
            reg_tokens=num_registers,
        )
        # fc_norm=False: the final LayerNorm acts on every token (CLS and patches alike), which iBOT needs
        self.model = VisionTransformer(**self.model_kwargs)
        self.grid_size: tuple[int, int] = tuple(self.model.patch_embed.grid_size)
        if pos_embed == "sincos":
            with torch.no_grad():
                emb = sincos_pos_embed(embed_dim, self.grid_size, cls_token=False)  # zero rows: CLS, registers
                self.model.pos_embed.copy_(torch.cat([emb.new_zeros(1 + num_registers, embed_dim), emb])[None])
            self.model.pos_embed.requires_grad_(False)
        self.mask_token: nn.Parameter | None = None
        self.num_features, self.embed_dim, self.patch_size = embed_dim, embed_dim, patch_size
        self.num_heads, self.pos_embed_kind, self.num_registers = num_heads, pos_embed, num_registers
        self.in_channels, self.image_size = in_channels, image_size

    def add_mask_token(self) -> None:
        """Create the learnable mask token of iBOT's masked student input (a method does this when it needs one:
        an unused parameter would break DDP for every other method)."""
        if self.mask_token is None:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
            nn.init.trunc_normal_(self.mask_token, std=0.02)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def _drop_registers(self, tokens: Tensor) -> Tensor:
        """(B, 1 + R + K, D) -> (B, 1 + K, D): the CLS token and the patch tokens."""
        r = self.num_registers
        return tokens if r == 0 else torch.cat([tokens[:, :1], tokens[:, 1 + r :]], dim=1)

    # -- embedding ---------------------------------------------------------------------------------------------
    def _embed(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """Images (B, C, H, W) -> prefix tokens (B, 1 + R, D: CLS, then the registers) and patch tokens (B, N, D),
        both with positions, and the grid (h, w)."""
        m = self.model
        x = m.patch_embed(x)  # (B, h, w, D) with dynamic_img_size
        b, h, w, d = x.shape
        x = x.reshape(b, h * w, d)
        if mask is not None:
            if self.mask_token is None:
                raise RuntimeError("this ViT has no mask token: call add_mask_token() first")
            if mask.shape != x.shape[:2]:
                raise ValueError(f"mask must be (B, N) = {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
            x = torch.where(mask.unsqueeze(-1).bool(), self.mask_token.to(x.dtype), x)
        pos, npt = m.pos_embed, 1 + self.num_registers
        if (h, w) != self.grid_size:  # another input size (e.g. DINO's local crops): interpolate the grid
            pos = resample_abs_pos_embed(pos, new_size=[h, w], old_size=list(self.grid_size), num_prefix_tokens=npt)
        prefix = torch.cat([t for t in (m.cls_token, m.reg_token) if t is not None], dim=1)  # (1, 1 + R, D)
        return (prefix + pos[:, :npt]).expand(b, -1, -1), x + pos[:, npt:], (h, w)

    def _blocks(self, tokens: Tensor, upto: int | None = None) -> Tensor:
        m = self.model
        x = m.norm_pre(m.pos_drop(tokens))
        for blk in m.blocks[:upto]:
            x = blk(x)
        return x

    # -- outputs -----------------------------------------------------------------------------------------------
    def forward_tokens(self, x: Tensor, ids_keep: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """Images (B, C, H, W) -> normalized tokens (B, 1 + K, D): CLS first, then the patch tokens.

        ``ids_keep`` (B, K): encode only these patches, in this order (MAE; K < N). ``mask`` (B, N) bool:
        replace these patches by the mask token (iBOT). Without either, K = N in image order. Register tokens are
        dropped."""
        prefix, patches, _ = self._embed(x, mask)
        if ids_keep is not None:
            patches = gather_tokens(patches, ids_keep)
        return self._drop_registers(self.model.norm(self._blocks(torch.cat([prefix, patches], dim=1))))

    def pool(self, tokens: Tensor) -> Tensor:
        """Tokens (B, 1 + K, D) -> feature (B, D): the CLS token, or the mean of the patch tokens."""
        return tokens[:, 0] if self.model.global_pool == "token" else tokens[:, 1:].mean(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.forward_tokens(x))

    @torch.no_grad()
    def last_attention(self, x: Tensor) -> Tensor:
        """CLS -> patch attention of the last block, per head: (B, heads, h, w), each map sums to < 1 (the
        rest is the CLS token's attention to itself and to the registers). The last block's q and k are recomputed
        from its input, so timm's fused attention kernels stay in use everywhere else."""
        prefix, patches, (h, w) = self._embed(x)
        tokens = self._blocks(torch.cat([prefix, patches], dim=1), upto=-1)
        attn = self.model.blocks[-1].attn
        b, n, _ = tokens.shape
        y = self.model.blocks[-1].norm1(tokens)
        qkv = attn.qkv(y).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])  # (B, heads, n, head_dim)
        weights = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1)  # (B, heads, 1, n)
        return weights[:, :, 0, 1 + self.num_registers :].reshape(b, attn.num_heads, h, w)

    def export_recipe(self) -> str:
        kwargs = ", ".join(f"{k}={v!r}" for k, v in self.model_kwargs.items())
        return (
            "import torch\nfrom timm.models.vision_transformer import VisionTransformer\n"
            f"model = VisionTransformer({kwargs})\nmodel.load_state_dict(torch.load(PATH, weights_only=True))"
        )
