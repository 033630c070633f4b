"""A visual tokenizer for BEiT: images -> one discrete token per patch, learned here, since no pretrained tokenizer
can be downloaded (BEiT v1 used DALL-E's dVAE; BEiT v2 a VQ-KD tokenizer, Peng et al., 2022).

For each image x (B, C, H, W), patch size p, grid h x w = H/p x W/p, N = h*w:
    tokens = encoder(x)[:, 1:]                      (B, N, D)   a ViT (the backbone), CLS dropped
    z = to_code(tokens)                              (B, N, d)   Linear-Tanh-Linear to the code width (BEiT v2)
    z_q, ids, commit = quantizer(z)                  (B, N, d), (B, N)   EMA codebook of K codes
                                                     (k-means init, dead-code restart, l2-normalised/cosine lookup)
    rec = decoder(z_q)                               transformer blocks on the token grid, then a head:
      pixels (a VQ-VAE):  rec (B, N, p*p*C),  loss = MSE(rec, patchify(x)) + commit
      teacher (VQ-KD):    rec (B, N, D_t),    loss = 1 - cos(rec, teacher patch features) + commit
The teacher is any frozen backbone with per-patch features (``modules.pretrained.patch_features``): our own
DINO/MAE (``CheckpointBackbone``), a timm model, a Hugging Face model; its map is resized to the token grid.

``tokenize(x) -> (B, h, w)`` token ids. ``tokenizer`` is the part BEiT needs (encoder, to_code, quantizer: a
``PatchTokenizer``); ``PatchTokenizer.from_checkpoint(path)`` rebuilds it from a checkpoint of this module without
the decoder or the teacher. Logged: reconstruction loss (and, for pixels, the normalized MSE: MSE / variance of
the target, 0 = perfect, 1 = predicting the mean), the commitment loss, the batch's codebook perplexity and
usage, dead codes and restarts; over each validation epoch the fraction of the K codes used and the perplexity
(``val/codebook_usage``, ``val/perplexity``), as BEiT v2 reports them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from lightning_ssl.checkpoint import CheckpointError, safe_load
from lightning_ssl.losses.beit import feature_cosine_loss
from lightning_ssl.methods.base import SSLMethod
from lightning_ssl.modules.backbones import Backbone
from lightning_ssl.modules.distributed import is_distributed
from lightning_ssl.modules.masking import patchify, unpatchify
from lightning_ssl.modules.pretrained import _instantiate, load_weights, patch_features
from lightning_ssl.modules.quantizer import Quantized, VectorQuantizer, codebook_usage
from lightning_ssl.modules.vit import ViT, sincos_pos_embed
from lightning_ssl.optim import WarmupCosineLR

# PatchTokenizer's constructor arguments, which VisualTokenizer shares (and its checkpoints record)
QUANTIZER_ARGS = (
    "num_codes",
    "code_dim",
    "decay",
    "commitment",
    "cosine",
    "kmeans_init",
    "dead_threshold",
    "restart",
    "dead_steps",
    "seed",
    "update_rule",
)


class PatchTokenizer(nn.Module):
    """Encoder ViT + BEiT v2's task layer + ``VectorQuantizer``: images (B, C, H, W) -> token ids (B, h, w).

    Args:
        backbone: the encoder, a ``lightning_ssl.modules.vit.ViT`` (BEiT v2: ViT-B/16).
        num_codes: vocabulary size K (BEiT v2: 8192).
        code_dim: code width (BEiT v2: 32).
        decay: the codebook's EMA decay (0.99).
        commitment: beta of the commitment loss (BEiT v2: 1.0; VQ-VAE: 0.25).
        cosine: l2-normalised codes, looked up by cosine similarity (BEiT v2).
        kmeans_init: codebook from k-means on the first training batch (BEiT v2).
        dead_threshold: codes whose EMA count per step falls below this are restarted (with ``restart``).
        restart: restart dead codes on encoder outputs (not in BEiT v2).
        dead_steps: codes unused for this many steps are dead too.
        seed: seed of the quantizer's random draws.
        update_rule: the codebook update, ``ema`` (VQ-VAE) or ``norm_ema`` (BEiT v2); see
            ``lightning_ssl.modules.quantizer``.
    """

    backbone: ViT  # checked in __init__

    def __init__(
        self,
        backbone: Backbone,
        num_codes: int = 8192,
        code_dim: int = 32,
        decay: float = 0.99,
        commitment: float = 1.0,
        cosine: bool = True,
        kmeans_init: bool = True,
        dead_threshold: float = 1.0,
        restart: bool = True,
        dead_steps: int = 10,
        seed: int = 0,
        update_rule: str = "ema",
    ) -> None:
        super().__init__()
        if not isinstance(backbone, ViT):
            raise ValueError(
                f"the tokenizer's encoder must be a ViT with patch tokens "
                f"(lightning_ssl.modules.vit.ViT), got {type(backbone).__name__}"
            )
        self.backbone = backbone
        dim = backbone.num_features
        self.to_code = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, code_dim))
        self.quantizer = VectorQuantizer(
            num_codes,
            code_dim,
            decay,
            commitment,
            cosine,
            kmeans_init,
            dead_threshold=dead_threshold,
            restart=restart,
            dead_steps=dead_steps,
            seed=seed,
            update_rule=update_rule,
        )
        self.num_codes, self.patch_size = num_codes, backbone.patch_size
        self.grid_size: tuple[int, int] = backbone.grid_size

    def encode(self, x: Tensor, update: bool | None = None) -> tuple[Tensor, Quantized]:
        """Images -> (encoder tokens (B, 1 + N, D), quantized patches: z_q (B, N, d), ids (B, N), loss, counts)."""
        tokens = self.backbone.forward_tokens(x)
        return tokens, self.quantizer(self.to_code(tokens[:, 1:]), update=update)

    @torch.no_grad()
    def tokenize(self, images: Tensor) -> Tensor:
        """Token ids (B, h, w) (long); never updates the codebook."""
        _, q = self.encode(images, update=False)
        h, w = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        return q.indices.view(len(images), h, w)

    def forward(self, images: Tensor) -> Tensor:
        return self.tokenize(images)

    @classmethod
    def from_checkpoint(cls, path: str, backbone: nn.Module | None = None) -> PatchTokenizer:
        """The tokenizer of a ``VisualTokenizer`` checkpoint (decoder and teacher left out), in eval mode."""
        ckpt = safe_load(path)
        hp = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "num_codes" not in hp:
            raise CheckpointError(f"{path!r} is not a checkpoint of lightning_ssl.methods.VisualTokenizer")
        if backbone is None:
            if not isinstance(hp.get("backbone"), dict):
                raise CheckpointError(
                    f"{path!r} does not record its encoder's config (the tokenizer was built in "
                    f"Python): pass backbone= the same encoder"
                )
            backbone = _instantiate(hp["backbone"])
        tokenizer = cls(backbone, **{k: hp[k] for k in QUANTIZER_ARGS if k in hp})
        sd = {k: v for k, v in ckpt["state_dict"].items() if k.split(".")[0] in ("backbone", "to_code", "quantizer")}
        if "backbone.mask_token" in sd and getattr(backbone, "mask_token", None) is None:
            sd.pop("backbone.mask_token")
        load_weights(tokenizer, sd, f"the tokenizer in {path!r}")
        return tokenizer.eval()


class TokenDecoder(nn.Module):
    """Codes on the token grid (B, N, d) -> (B, N, out_dim): embed, fixed 2-D sin-cos positions, transformer blocks,
    LayerNorm, head (linear for pixels; Linear-Tanh-Linear for teacher features, as BEiT v2's decoder).

    Args:
        code_dim: Width of the codes.
        grid: Token grid (h, w).
        out_dim: Output width per token: p * p * C pixels (VQ-VAE) or the teacher's feature width (VQ-KD).
        dim: Decoder width.
        depth: Transformer blocks.
        num_heads: Attention heads per block.
        mlp_head: Linear-Tanh-Linear head (BEiT v2's, for teacher features) instead of one linear layer.
    """

    pos_embed: Tensor  # (1, N, dim) fixed sine-cosine positions (a buffer)

    def __init__(
        self,
        code_dim: int,
        grid: tuple[int, int],
        out_dim: int,
        dim: int = 128,
        depth: int = 2,
        num_heads: int = 4,
        mlp_head: bool = False,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(code_dim, dim)
        self.register_buffer("pos_embed", sincos_pos_embed(dim, grid, cls_token=False)[None], persistent=False)
        self.blocks = nn.Sequential(*[Block(dim, num_heads, 4.0, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = (
            nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, out_dim))
            if mlp_head
            else nn.Linear(dim, out_dim)
        )

    def forward(self, z_q: Tensor) -> Tensor:
        return self.head(self.norm(self.blocks(self.embed(z_q) + self.pos_embed)))


class VisualTokenizer(SSLMethod):
    """Visual tokenizer for BEiT: a ViT encoder, an EMA vector quantizer and a decoder (VQ-VAE or VQ-KD).

    Args:
        backbone: The encoder, a ``lightning_ssl.modules.vit.ViT``.
        teacher: None trains a VQ-VAE reconstructing pixels; a backbone trains VQ-KD (BEiT v2) reconstructing its
            patch features (frozen; 1-channel images are repeated to 3 channels if it takes 3).
        num_codes: Vocabulary size K of the codebook (8192 in BEiT v2).
        code_dim: Width of a code (32 in BEiT v2).
        decay: EMA decay of the codebook statistics, in [0, 1) (0.99 in BEiT v2).
        commitment: Weight beta of the commitment loss (BEiT v2: 1.0; VQ-VAE: 0.25).
        cosine: L2-normalize codes and encoder outputs (cosine-similarity lookup, as BEiT v2).
        kmeans_init: Initialize the codebook by k-means on the first batch's encoder outputs.
        dead_threshold: A code whose EMA count per step falls below this is dead and may be restarted.
        restart: Restart dead codes from random encoder outputs of the current batch.
        dead_steps: Steps a code may go unused before it is restarted.
        seed: Seed of the k-means initialization and the restarts (the same on every process).
        decoder_dim: Width of the decoder (768 in BEiT v2).
        decoder_depth: Transformer blocks in the decoder (3 in BEiT v2).
        decoder_heads: Attention heads per decoder block (12 in BEiT v2).
        teacher_image_size: Resize the images to this side for the teacher (VQ-KD); None: as they are.
        update_rule: The codebook update, ``ema`` (VQ-VAE's EMA of counts and sums) or ``norm_ema`` (BEiT v2's
            normalized EMA); see ``lightning_ssl.modules.quantizer``.
        optimizer: Factory called with the parameter groups (no weight decay on biases and norm parameters);
            from a config, the ``class_path`` / ``init_args`` of any ``torch.optim`` optimizer. Default AdamW.
        scheduler: Factory called with the optimizer, stepped every optimizer step. Default ``WarmupCosineLR``
            (linear warm-up, then cosine over ``trainer.estimated_stepping_batches``); None: a constant LR.
    """

    backbone: ViT  # checked by PatchTokenizer
    _tokenizer: PatchTokenizer  # in __dict__, not a submodule (see __init__)
    val_counts: Tensor  # (K,) codes picked in this validation (a buffer)

    def __init__(
        self,
        backbone: Backbone,
        teacher: Backbone | None = None,
        num_codes: int = 8192,
        code_dim: int = 32,
        decay: float = 0.99,
        commitment: float = 1.0,
        cosine: bool = True,
        kmeans_init: bool = True,
        dead_threshold: float = 1.0,
        restart: bool = True,
        dead_steps: int = 10,
        seed: int = 0,
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        teacher_image_size: int | None = None,
        update_rule: str = "ema",
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        super().__init__(backbone, optimizer, scheduler)
        self.save_hyperparameters()
        tokenizer = PatchTokenizer(
            backbone,
            num_codes,
            code_dim,
            decay,
            commitment,
            cosine,
            kmeans_init,
            dead_threshold,
            restart,
            dead_steps,
            seed,
            update_rule,
        )
        self.to_code, self.quantizer = tokenizer.to_code, tokenizer.quantizer  # registered here, shared with it
        self.__dict__["_tokenizer"] = tokenizer  # not a submodule: the parts above are the state
        vit = tokenizer.backbone
        self.num_codes, self.patch_size, self.teacher_image_size = num_codes, vit.patch_size, teacher_image_size
        self.channels, grid = vit.in_channels, vit.grid_size
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False).eval()
            out_dim = self._teacher_features(
                teacher, torch.zeros(1, self.channels, vit.image_size, vit.image_size), grid
            ).shape[-1]
        else:
            out_dim = self.patch_size**2 * self.channels
        self.decoder = TokenDecoder(
            code_dim, grid, out_dim, decoder_dim, decoder_depth, decoder_heads, mlp_head=teacher is not None
        )
        self.register_buffer("val_counts", torch.zeros(num_codes), persistent=False)

    @property
    def tokenizer(self) -> PatchTokenizer:
        """The encoder + quantizer (shares this module's weights): what BEiT uses."""
        return self._tokenizer

    def tokenize(self, images: Tensor) -> Tensor:
        """Token ids (B, h, w)."""
        return self.tokenizer.tokenize(images)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.backbone, self.to_code, self.decoder]

    def train(self, mode: bool = True) -> VisualTokenizer:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: no dropout, no batch statistics
        return self

    # -- targets -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _teacher_features(self, teacher: nn.Module, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """The teacher's patch features resized to the token grid: (B, N, D_t)."""
        if self.teacher_image_size is not None and x.shape[-1] != self.teacher_image_size:
            x = F.interpolate(x, size=(self.teacher_image_size,) * 2, mode="bilinear", align_corners=False)
        if x.shape[1] == 1 and getattr(teacher, "in_channels", 1) == 3:
            x = x.expand(-1, 3, -1, -1)
        fmap = patch_features(teacher, x).float()  # (B, D_t, h_t, w_t)
        if tuple(fmap.shape[-2:]) != grid:
            fmap = F.interpolate(fmap, size=grid, mode="bilinear", align_corners=False)
        return fmap.flatten(2).transpose(1, 2)

    def forward_tokenizer(self, x: Tensor, update: bool | None = None) -> dict[str, Tensor]:
        """Images -> reconstruction, target, losses, code ids and counts, and the encoder tokens."""
        tokens, q = self.tokenizer.encode(x, update=update)
        rec = self.decoder(q.z_q)
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        if self.teacher is None:
            target = patchify(x, self.patch_size).float()
            rec_loss = F.mse_loss(rec.float(), target)
        else:
            target = self._teacher_features(self.teacher, x, grid)
            rec_loss = feature_cosine_loss(rec, target)
        return {
            "rec": rec,
            "target": target,
            "rec_loss": rec_loss,
            "commit_loss": q.loss,
            "indices": q.indices,
            "counts": q.counts,
            "tokens": tokens,
        }

    # -- training ------------------------------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        views, _ = batch
        x = views[0] if isinstance(views, (list, tuple)) else views
        out = self.forward_tokenizer(x)
        loss = out["rec_loss"] + out["commit_loss"]
        usage, perplexity = codebook_usage(out["counts"])
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict(
            {
                "train/rec_loss": out["rec_loss"],
                "train/commit_loss": out["commit_loss"],
                "train/perplexity": perplexity,
                "train/batch_usage": usage,
                "train/dead_codes": self.quantizer.dead_codes().float().mean(),
                "train/restarted": self.quantizer.restarted.float(),
            }
        )
        if self.teacher is None:
            self.log("train/rec_nmse", out["rec_loss"] / out["target"].var().clamp(min=1e-8))
        # the encoder saw the whole image: its pooled tokens are embed(x)
        return {"loss": loss, "features": self.backbone.pool(out["tokens"]).detach()}

    def on_validation_epoch_start(self) -> None:
        self.val_counts.zero_()

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        x, y = batch
        if dataloader_idx != 0:  # the kNN bank: features only
            return {"features": self.embed(x), "labels": y}
        out = self.forward_tokenizer(x, update=False)
        self.val_counts += out["counts"]
        self.log("val/rec_loss", out["rec_loss"], sync_dist=True, add_dataloader_idx=False)
        if self.teacher is None:
            nmse = out["rec_loss"] / out["target"].var().clamp(min=1e-8)
            self.log("val/rec_nmse", nmse, sync_dist=True, add_dataloader_idx=False)
        return {"features": self.backbone.pool(out["tokens"]), "labels": y}

    def on_validation_epoch_end(self) -> None:
        counts = self.val_counts.clone()
        if is_distributed():
            dist.all_reduce(counts)
        if counts.sum() > 0:
            usage, perplexity = codebook_usage(counts)
            self.log_dict({"val/codebook_usage": usage, "val/perplexity": perplexity})  # the same on every process
            self.last_val_usage = (usage, perplexity)

    # -- pictures ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> tuple[Tensor | None, Tensor]:
        """(pixel reconstruction (B, C, H, W) or None for a VQ-KD tokenizer, token ids (B, h, w))."""
        out = self.forward_tokenizer(x, update=False)
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        rec = unpatchify(out["rec"].float(), self.patch_size, self.channels, grid) if self.teacher is None else None
        return rec, out["indices"].view(len(x), *grid)

    # -- checkpoints: the teacher comes from its own config, not from this module's checkpoints ------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("teacher.")}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.teacher is not None and "state_dict" in checkpoint:  # before the architecture check sees it missing
            checkpoint["state_dict"].update({f"teacher.{k}": v for k, v in self.teacher.state_dict().items()})
        super().on_load_checkpoint(checkpoint)
