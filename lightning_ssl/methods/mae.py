"""MAE: Masked Autoencoders Are Scalable Vision Learners (He et al., CVPR 2022).

For each image x (one view: random resized crop + flip):
    target = patchify(x)                                    (B, N, p*p*C)
    ids_keep, mask, ids_restore = random_masking(B, N, 0.75)
    latent = encoder(x, ids_keep)                           (B, 1 + K, D)   the ViT sees the visible 25% only
    pred = decoder(latent, ids_restore)                     (B, N, p*p*C)   mask tokens fill the gaps (own pos. emb.)
    loss = MSE(pred, per-patch normalized target) on the masked patches only
Optimizer: AdamW with betas (0.9, 0.95), lr = base_lr * global batch / 256, warmup + cosine.
Downstream, the encoder sees all patches (``embed``); the decoder is dropped.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from lightning_ssl.losses.mae import mae_loss
from lightning_ssl.methods.base import SSLMethod
from lightning_ssl.modules.backbones import Backbone
from lightning_ssl.modules.masking import gather_tokens, num_kept, patchify, random_masking, unpatchify
from lightning_ssl.modules.vit import ViT, sincos_pos_embed
from lightning_ssl.optim import WarmupCosineLR, param_groups, with_schedule


def mae_adamw(params: Any) -> torch.optim.Optimizer:
    """MAE's pre-training optimizer (He et al., table 8): AdamW, betas (0.9, 0.95), weight decay 0.05. Its lr is
    set from ``MAE.base_lr``."""
    return torch.optim.AdamW(params, lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)


class MAEDecoder(nn.Module):
    """The lightweight decoder: project the encoder tokens, insert a shared learnable mask token at every masked
    position, add a fixed 2-D sin-cos positional embedding, transformer blocks, predict each patch's pixels.

    Args:
        encoder_dim: Width of the encoder's tokens (the ViT's embedding width).
        grid: Patch grid (h, w) of the images.
        patch_dim: Values per patch to predict, p * p * C.
        dim: Decoder width (512 in the paper).
        depth: Decoder transformer blocks (8 in the paper).
        num_heads: Attention heads per decoder block (16 in the paper).
        mlp_ratio: Hidden width of the blocks' MLP as a multiple of ``dim`` (4 in the paper).
    """

    pos_embed: Tensor  # (1, 1 + N, dim) fixed sine-cosine positions (a buffer)

    def __init__(
        self,
        encoder_dim: int,
        grid: tuple[int, int],
        patch_dim: int,
        dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_pos_embed(dim, grid)[None], persistent=False)  # (1, 1 + N, dim)
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, patch_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """latent (B, 1 + K, D_enc): CLS + visible tokens in shuffled order; ids_restore (B, N) -> (B, N, P)."""
        x = self.embed(latent)
        b, n = ids_restore.shape
        patches = torch.cat([x[:, 1:], self.mask_token.to(x.dtype).expand(b, n - x.shape[1] + 1, -1)], dim=1)
        patches = gather_tokens(patches, ids_restore)  # unshuffle: back to image order
        x = torch.cat([x[:, :1], patches], dim=1) + self.pos_embed
        return self.pred(self.norm(self.blocks(x)))[:, 1:]


class MAE(SSLMethod):
    """MAE: mask 75% of the patches, encode the visible ones, reconstruct the pixels of the masked ones.

    Args:
        backbone: The encoder, a ``lightning_ssl.modules.vit.ViT`` (images (B, C, H, W) -> features (B, D));
            kept for downstream use (``embed``).
        mask_ratio: Fraction of the patches masked in every image, in (0, 1) (0.75 in the paper).
        decoder_dim: Width of the lightweight decoder (512 in the paper).
        decoder_depth: Transformer blocks in the decoder (8 in the paper).
        decoder_heads: Attention heads per decoder block (16 in the paper).
        norm_pix_loss: Normalize each target patch by its own mean and std (the paper's better variant).
        base_lr: Learning rate per 256 images; the optimizer's lr is ``base_lr * global batch / 256`` (1.5e-4 in
            the paper). None: the optimizer's own lr is used as given.
        optimizer: Factory called with the parameter groups; default ``mae_adamw`` (AdamW, betas (0.9, 0.95),
            weight decay 0.05, the paper's). From a config, any ``torch.optim`` optimizer.
        scheduler: Factory called with the optimizer, stepped every optimizer step. Default ``WarmupCosineLR``;
            None: a constant LR.
    """

    backbone: ViT  # checked in __init__

    def __init__(
        self,
        backbone: Backbone,
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix_loss: bool = True,
        base_lr: float | None = 1.5e-4,
        optimizer: OptimizerCallable = mae_adamw,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        if not isinstance(backbone, ViT):
            raise ValueError(
                f"MAE needs a ViT backbone that encodes visible patches only "
                f"(lightning_ssl.modules.vit.ViT), got {type(backbone).__name__}"
            )
        super().__init__(backbone, optimizer, scheduler)
        self.save_hyperparameters()
        num_kept(backbone.num_patches, mask_ratio)  # rejects ratios outside [0, 1)
        if base_lr is not None and base_lr <= 0:
            raise ValueError(f"base_lr must be > 0, got {base_lr}")
        self.mask_ratio, self.norm_pix_loss, self.base_lr = mask_ratio, norm_pix_loss, base_lr
        self.patch_size, self.channels = backbone.patch_size, backbone.in_channels
        patch_dim = self.patch_size**2 * self.channels
        self.decoder = MAEDecoder(
            backbone.num_features, backbone.grid_size, patch_dim, decoder_dim, decoder_depth, decoder_heads
        )

    def _check_size(self, x: Tensor) -> None:
        if tuple(x.shape[-2:]) != (self.backbone.image_size,) * 2:
            raise ValueError(
                f"MAE's decoder is built for {self.backbone.image_size} px images, got {tuple(x.shape[-2:])}"
            )

    def forward_mae(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Images (B, C, H, W) -> (pred (B, N, P), target (B, N, P), mask (B, N), latent (B, 1 + K, D))."""
        self._check_size(x)
        target = patchify(x, self.patch_size)
        b, n, _ = target.shape
        device = x.device if generator is None else "cpu"  # a CPU generator draws on the CPU
        ids_keep, mask, ids_restore = (t.to(x.device) for t in random_masking(b, n, self.mask_ratio, device, generator))
        latent = self.backbone.forward_tokens(x, ids_keep=ids_keep)
        pred = self.decoder(latent, ids_restore)
        return pred, target, mask, latent

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        views, _ = batch
        x = views[0] if isinstance(views, (list, tuple)) else views
        pred, target, mask, _latent = self.forward_mae(x)
        loss = mae_loss(pred, target, mask, self.norm_pix_loss)
        self.log("train/loss", loss, prog_bar=True)
        # the encoder saw 25% of the patches; embed sees them all: the monitors run embed on the view itself
        return {"loss": loss, "embed_input": x}

    @torch.no_grad()
    def reconstruct(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(masked, reconstruction), both (B, C, H, W) in the input's normalization: masked patches set to 0,
        and the prediction at masked patches with the visible patches pasted back (as in the paper's figures).
        With ``norm_pix_loss`` predictions are per-patch normalized: they are shown with each true patch's mean
        and std, so the pictures show structure, not the (unpredicted) patch brightness."""
        pred, target, mask, _ = self.forward_mae(x, generator)
        pred, target = pred.float(), target.float()
        if self.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            pred = pred * (var + 1e-6) ** 0.5 + mean
        m = mask.unsqueeze(-1)
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        masked = unpatchify(target * (1 - m), self.patch_size, self.channels, grid)
        recon = unpatchify(pred * m + target * (1 - m), self.patch_size, self.channels, grid)
        return masked, recon

    def global_batch_size(self) -> int:
        """Images per optimizer step over all processes: batch size x world size x accumulate_grad_batches."""
        trainer = self.trainer
        size = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
        if not isinstance(size, int):
            trainer.estimated_stepping_batches  # noqa: B018  (sets up the training dataloader)
            size = getattr(trainer.train_dataloader, "batch_size", None)
        if not isinstance(size, int):
            raise ValueError(
                "MAE cannot find the batch size to scale base_lr by; set base_lr=None and give the "
                "optimizer's lr directly"
            )
        return size * trainer.world_size * trainer.accumulate_grad_batches

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_fn(param_groups(self.trainable_modules()))
        if self.base_lr is not None:  # the linear scaling rule (Goyal et al., 2017), as MAE does
            lr = self.base_lr * self.global_batch_size() / 256
            for group in optimizer.param_groups:
                group["lr"] = lr
        return with_schedule(optimizer, self.scheduler_fn, self.trainer)
