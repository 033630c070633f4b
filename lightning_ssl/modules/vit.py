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

``pos_embed="sincos"`` uses MAE's fixed 2-D sine-cosine positional embedding instead of a learned one, ``"none"``
no absolute positions at all (BEiT and SimMIM, whose positions come from the relative position bias). The options of
BEiT (Bao et al., 2022) and SimMIM, usable by every method: ``layer_scale`` (timm's LayerScale, init 0.1 for ViT-B),
``rel_pos_bias`` (one relative position bias table shared by all blocks, added to the attention logits),
``depth_scaled_init`` (block ``l``'s output projections divided by sqrt(2 l)), and ``class_token=False`` (I-JEPA's
encoders have none: the first token ``forward_tokens`` returns is then the mean of the patch tokens, so every method
reads the same layout). ``num_registers`` > 0 adds register tokens (Darcet et al., "Vision Transformers Need
Registers", ICLR 2024): learned tokens after the CLS token that take part in attention and are dropped from every
output (tokens, pooled features, attention maps), so the token layout every method sees stays (B, 1 + K, D).

Sizes: ViT-S/16 = (embed_dim 384, depth 12, heads 6); ViT-B/16 = (768, 12, 12); ViT-Ti = (192, 12, 3).
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import Attention, resample_abs_pos_embed
from timm.models.beit import RelativePositionBias
from timm.models.vision_transformer import Block, VisionTransformer
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
    """timm ``VisionTransformer`` as a backbone (see the module docstring).

    Args:
        in_channels: image channels (filled in from the data by the CLI).
        image_size: side of the square training images in pixels, a multiple of ``patch_size``; other sizes run
            with interpolated positions.
        patch_size: side of a patch in pixels (16 for ViT-S/16 and ViT-B/16, 14 in DINOv2).
        embed_dim: token width D (ViT-S 384, ViT-B 768, ViT-L 1024, ViT-H 1280).
        depth: number of transformer blocks (12; ViT-L 24, ViT-H 32).
        num_heads: attention heads per block (ViT-S 6, ViT-B 12, ViT-L/H 16).
        mlp_ratio: MLP hidden width / embed_dim (4).
        qkv_bias: biases on the query/key/value projection.
        drop_path_rate: stochastic depth at the last block (linear in depth from 0; DINO, BEiT, SimMIM: 0.1).
        pool: ``token`` (the CLS token) or ``avg`` (mean of the patch tokens) as the feature ``forward`` returns.
        pos_embed: ``learned``, ``sincos`` (fixed 2-D sine-cosine, MAE / I-JEPA) or ``none``.
        num_registers: register tokens after the CLS token (0: none; 4 in Darcet et al. and DINOv2's reg4
            models). Their position rows (timm's layout, one per prefix token) are zero with ``sincos``.
        class_token: prepend a CLS token (I-JEPA: False).
        layer_scale: LayerScale's initial value on each residual branch (BEiT and SimMIM ViT-B: 0.1); None: off.
        rel_pos_bias: a relative position bias shared by all blocks (BEiT, SimMIM); the ViT then runs only at its
            own grid, or on a subset of its patches (``ids_keep``), and without registers.
        depth_scaled_init: divide block ``l``'s attention and MLP output weights by sqrt(2 l) (BEiT, SimMIM).
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
        class_token: bool = True,
        layer_scale: float | None = None,
        rel_pos_bias: bool = False,
        depth_scaled_init: bool = False,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if pool not in ("token", "avg"):
            raise ValueError(f"pool must be 'token' (CLS) or 'avg' (mean of patch tokens), got {pool!r}")
        if pos_embed not in ("learned", "sincos", "none"):
            raise ValueError(f"pos_embed must be 'learned', 'sincos' or 'none', got {pos_embed!r}")
        if not class_token and pool == "token":
            raise ValueError("pool 'token' needs the CLS token: use pool 'avg' with class_token false")
        if num_registers < 0:
            raise ValueError(f"num_registers must be >= 0, got {num_registers}")
        if num_registers and rel_pos_bias:
            raise ValueError("register tokens and a relative position bias do not go together: choose one")
        self.model_kwargs: dict[str, Any] = dict(
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
            class_token=class_token,
            init_values=layer_scale,
            fix_init=depth_scaled_init,
        )
        # fc_norm=False: the final LayerNorm acts on every token (CLS and patches alike), which iBOT needs
        self.model = VisionTransformer(**self.model_kwargs)
        self.grid_size: tuple[int, int] = tuple(self.model.patch_embed.grid_size)
        if pos_embed != "learned":  # fixed: sin-cos, or zeros (positions from the relative position bias)
            with torch.no_grad():
                emb = sincos_pos_embed(embed_dim, self.grid_size, cls_token=False)  # zero rows: CLS, registers
                table = torch.cat([emb.new_zeros(int(class_token) + num_registers, embed_dim), emb])[None]
                self.pos_table.copy_(table if pos_embed == "sincos" else torch.zeros_like(table))
            self.pos_table.requires_grad_(False)
        self.rel_pos_bias = RelativePositionBias(self.grid_size, num_heads) if rel_pos_bias else None
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
    def pos_table(self) -> nn.Parameter:
        """timm's position embedding (1, P + N, D) of the prefix tokens and the patch grid."""
        if self.model.pos_embed is None:  # timm's pos_embed="none"; this class always builds a table
            raise RuntimeError("this ViT's timm model has no position embedding table")
        return self.model.pos_embed

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def _drop_registers(self, tokens: Tensor) -> Tensor:
        """(B, C + R + K, D) -> (B, C + K, D): the CLS token (C = 1, or 0 without one) and the patch tokens."""
        r, c = self.num_registers, int(self.model.cls_token is not None)
        return tokens if r == 0 else torch.cat([tokens[:, :c], tokens[:, c + r :]], dim=1)

    # -- embedding ---------------------------------------------------------------------------------------------
    def _embed(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """Images (B, C, H, W) -> prefix tokens (B, P, D: the CLS token if there is one, then the registers) and
        patch tokens (B, N, D), both with positions, and the grid (h, w)."""
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
        pos, p = self.pos_table, int(m.cls_token is not None) + self.num_registers
        if (h, w) != self.grid_size:  # another input size (e.g. DINO's local crops): interpolate the grid
            if self.rel_pos_bias is not None:
                raise ValueError(f"a ViT with a relative position bias runs at its {self.grid_size} grid, got {(h, w)}")
            pos = resample_abs_pos_embed(pos, new_size=[h, w], old_size=list(self.grid_size), num_prefix_tokens=p)
        prefix: list[Tensor] = [t for t in (m.cls_token, m.reg_token) if t is not None]  # (1, 1, D), (1, R, D)
        prefix_tokens = (torch.cat(prefix, dim=1) + pos[:, :p]).expand(b, -1, -1) if prefix else x[:, :0]
        return prefix_tokens, x + pos[:, p:], (h, w)

    def _attn_bias(self, ids_keep: Tensor | None = None) -> Tensor | None:
        """The shared relative position bias (1, heads, T, T), or (B, heads, T, T) for the patches ``ids_keep``."""
        if self.rel_pos_bias is None:
            return None
        bias = self.rel_pos_bias()[None]  # (1, heads, 1 + N, 1 + N): CLS first
        if self.model.cls_token is None:
            bias = bias[:, :, 1:, 1:]
        if ids_keep is None:
            return bias
        p = int(self.model.cls_token is not None)
        keep = torch.cat([ids_keep.new_zeros(len(ids_keep), p), ids_keep + p], dim=1)  # (B, T) rows of the bias
        return bias.expand(len(keep), -1, -1, -1)[
            torch.arange(len(keep), device=keep.device)[:, None, None], :, keep[:, :, None], keep[:, None, :]
        ].permute(0, 3, 1, 2)

    def _blocks(self, tokens: Tensor, upto: int | None = None, bias: Tensor | None = None) -> Tensor:
        m = self.model
        x = m.norm_pre(m.pos_drop(tokens))
        bias = bias.to(x.dtype) if bias is not None else None
        for blk in m.blocks[:upto]:
            x = blk(x, attn_mask=bias)
        return x

    # -- outputs -----------------------------------------------------------------------------------------------
    def forward_tokens(self, x: Tensor, ids_keep: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """Images (B, C, H, W) -> normalized tokens (B, 1 + K, D): CLS first (without a class token, the mean of the
        patch tokens), then the patch tokens.

        ``ids_keep`` (B, K): encode only these patches, in this order (MAE; K < N). ``mask`` (B, N) bool:
        replace these patches by the mask token (iBOT). Without either, K = N in image order. Register tokens are
        dropped."""
        prefix, patches, _ = self._embed(x, mask)
        if ids_keep is not None:
            patches = gather_tokens(patches, ids_keep)
        tokens = self.model.norm(self._blocks(torch.cat([prefix, patches], dim=1), bias=self._attn_bias(ids_keep)))
        tokens = self._drop_registers(tokens)
        return tokens if self.model.cls_token is not None else torch.cat([tokens.mean(1, keepdim=True), tokens], 1)

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
        if self.model.cls_token is None:
            raise ValueError("attention maps are the CLS token's: this ViT has none (class_token false)")
        prefix, patches, (h, w) = self._embed(x)
        bias = self._attn_bias()
        tokens = self._blocks(torch.cat([prefix, patches], dim=1), upto=-1, bias=bias)
        block = self.model.blocks[-1]
        if not isinstance(block, Block) or not isinstance(block.attn, Attention):  # what VisionTransformer builds
            raise TypeError(f"attention maps are read from timm's Block and Attention, got {type(block).__name__}")
        attn = block.attn
        b, n, _ = tokens.shape
        y = block.norm1(tokens)
        qkv = attn.qkv(y).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])  # (B, heads, n, head_dim)
        logits = (q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)  # (B, heads, 1, n)
        weights = (logits.float() + (bias[:, :, :1].float() if bias is not None else 0.0)).softmax(dim=-1)
        return weights[:, :, 0, 1 + self.num_registers :].reshape(b, attn.num_heads, h, w)

    def export_recipe(self) -> str:
        kwargs = ", ".join(f"{k}={v!r}" for k, v in self.model_kwargs.items())
        return (
            "import torch\nfrom timm.models.vision_transformer import VisionTransformer\n"
            f"model = VisionTransformer({kwargs})\nmodel.load_state_dict(torch.load(PATH, weights_only=True))"
        )
