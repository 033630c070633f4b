"""BEiT: BERT Pre-Training of Image Transformers (Bao et al., ICLR 2022), with the tokenizer of BEiT v2 (Peng et
al., 2022) or any other.

For each image x (one view: random resized crop + flip), patch size p, grid h x w, N = h*w, vocabulary V:
    t = tokenizer(x)                                 (B, N)        visual token ids; frozen, no gradient
    mask = beit_masking(B, (h, w))                   (B, N) bool   block-wise, ~40% (75 of 196 at 14x14)
    z = ViT(x with masked patches -> [MASK])         (B, 1 + N, D) a learned [MASK] embedding replaces them
    logits = head(z[:, 1:][mask])                    (M, V)        the masked positions only
    loss = cross-entropy(logits, t[mask])            mean over the masked patches of the global batch
Optimizer: AdamW (0.9, 0.999), weight decay 0.05, lr 1.5e-3 at batch 2048, warmup + cosine (paper, table 11). The
reference's ViT-B has layer scale 0.1, one relative position bias shared by all blocks instead of absolute positions
and depth-scaled init, and its gradient norm is clipped at 3.0 (``ViT(layer_scale, rel_pos_bias, pos_embed="none",
depth_scaled_init)``, ``trainer.gradient_clip_val``: configs/beit/imagenet.yaml).
Downstream, the ViT sees the unmasked image (``embed``); the head and the tokenizer are dropped.

The tokenizer is a checkpoint of ``VisualTokenizer`` (a path: its encoder and codebook are loaded), a
``VisualTokenizer`` / ``PatchTokenizer``, or any module with ``tokenize(images) -> (B, h, w)`` ids and
``num_codes``. Its grid must match the ViT's, and it must have been trained on images normalized as this data is.
Its weights are part of BEiT's checkpoints, so a resumed run keeps the tokenizer it started with. A tokenizer named
by a path (a file, a run directory, a config's root: its newest run) is recorded as the file it resolved to, with
its sha256, in the hyperparameters (``tokenizer_checkpoint``: the checkpoint, ``hparams.yaml``, the W&B config) and
in the log, so the run says exactly which tokenizer it learned from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_ssl.checkpoint import content_sha256, safe_load
from lightning_ssl.losses.beit import masked_token_loss
from lightning_ssl.methods.base import SSLMethod
from lightning_ssl.methods.visual_tokenizer import PatchTokenizer, VisualTokenizer
from lightning_ssl.modules.backbones import Backbone
from lightning_ssl.modules.distributed import is_distributed, world_size
from lightning_ssl.modules.masking import beit_masking
from lightning_ssl.modules.vit import ViT
from lightning_ssl.optim import WarmupCosineLR
from lightning_ssl.runs import resolve_checkpoint


def beit_adamw(params: Any) -> torch.optim.Optimizer:
    """BEiT's pre-training optimizer (Bao et al., table 11): AdamW, betas (0.9, 0.999), weight decay 0.05."""
    return torch.optim.AdamW(params, lr=1.5e-3, betas=(0.9, 0.999), weight_decay=0.05)


@runtime_checkable
class ImageTokenizer(Protocol):
    """What BEiT learns to predict: a module with ``tokenize(images (B, C, H, W)) -> ids (B, h, w)`` and an int
    ``num_codes`` (``PatchTokenizer``, or any module alike)."""

    num_codes: int

    def tokenize(self, images: Tensor) -> Tensor: ...

    def eval(self) -> Any: ...


def load_tokenizer(tokenizer: str | nn.Module) -> ImageTokenizer:
    """A frozen tokenizer from a checkpoint path or a module (see the module docstring)."""
    if isinstance(tokenizer, str):  # a checkpoint file, a run directory or a config's output root
        tokenizer = PatchTokenizer.from_checkpoint(resolve_checkpoint(tokenizer))
    elif isinstance(tokenizer, VisualTokenizer):
        tokenizer = tokenizer.tokenizer
    if not isinstance(tokenizer, ImageTokenizer) or not isinstance(tokenizer.num_codes, int):
        raise ValueError(
            f"a BEiT tokenizer needs tokenize(images) -> (B, h, w) ids and an int num_codes; "
            f"{type(tokenizer).__name__} lacks them"
        )
    tokenizer.requires_grad_(False).eval()
    return tokenizer


class BEiT(SSLMethod):
    """BEiT: predict the visual-token id of each block-masked patch with a ViT.

    Args:
        backbone: A ``lightning_ssl.modules.vit.ViT`` (it has the learned [MASK] embedding); kept for downstream
            use (``embed``).
        tokenizer: The frozen visual tokenizer: a ``VisualTokenizer`` checkpoint path (or an output root: its
            newest run), a ``VisualTokenizer`` / ``PatchTokenizer``, or any module with ``tokenize(images) -> (B,
            h, w)`` ids and ``num_codes``. Its grid must match the ViT's.
        num_masked: Patches masked per image; None: BEiT's 75 of 196 at 14 x 14 (~40%), scaled to the grid.
        min_block: Smallest masked block in patches; None: BEiT's 16 at 14 x 14, scaled to the grid.
        aspect: Range of the blocks' aspect ratio ((0.3, 1/0.3) in the paper).
        optimizer: Factory called with the parameter groups (no weight decay on biases and norm parameters);
            from a config, the ``class_path`` / ``init_args`` of any ``torch.optim`` optimizer. Default AdamW.
        scheduler: Factory called with the optimizer, stepped every optimizer step. Default ``WarmupCosineLR``
            (linear warm-up, then cosine over ``trainer.estimated_stepping_batches``); None: a constant LR.
    """

    backbone: ViT  # checked in __init__

    def __init__(
        self,
        backbone: Backbone,
        tokenizer: str | nn.Module,
        num_masked: int | None = None,
        min_block: int | None = None,
        aspect: tuple[float, float] = (0.3, 1 / 0.3),
        optimizer: OptimizerCallable = beit_adamw,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        if not isinstance(backbone, ViT):
            raise ValueError(
                f"BEiT needs a ViT backbone with a mask token (lightning_ssl.modules.vit.ViT), "
                f"got {type(backbone).__name__}"
            )
        super().__init__(backbone, optimizer, scheduler)
        self.save_hyperparameters()
        self.grid: tuple[int, int] = backbone.grid_size
        beit_masking(1, self.grid, num_masked, min_block, aspect)  # rejects impossible settings now
        self.num_masked, self.min_block = num_masked, min_block
        self.aspect: tuple[float, float] = (aspect[0], aspect[1])
        backbone.add_mask_token()
        self.tokenizer_checkpoint: dict[str, str] | None = None
        if isinstance(tokenizer, str):  # which file it was, by content: the run can be reproduced
            tokenizer = resolve_checkpoint(tokenizer)
            if not Path(tokenizer).is_file():
                safe_load(tokenizer)  # the checkpoint error that names the missing file and what lies beside it
            self.tokenizer_checkpoint = {"path": str(Path(tokenizer).resolve()), "sha256": content_sha256(tokenizer)}
            self.hparams["tokenizer_checkpoint"] = self.tokenizer_checkpoint  # the checkpoint and hparams.yaml
            self.__dict__["_hparams_initial"]["tokenizer_checkpoint"] = self.tokenizer_checkpoint  # the loggers
            rank_zero_info(
                f"BEiT tokenizer: {self.tokenizer_checkpoint['path']} (sha256 {self.tokenizer_checkpoint['sha256']})"
            )
        self.tokenizer = load_tokenizer(tokenizer)
        self.vocab_size = self.tokenizer.num_codes
        size = backbone.image_size
        ids = self.tokenizer.tokenize(torch.zeros(1, backbone.in_channels, size, size))
        if tuple(ids.shape[1:]) != self.grid:
            raise ValueError(
                f"the tokenizer gives a {tuple(ids.shape[1:])} grid of tokens for {size} px images, the "
                f"ViT has {self.grid} patches: use a tokenizer with the ViT's patch size"
            )
        self.head = nn.Linear(backbone.num_features, self.vocab_size)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.backbone, self.head]

    def train(self, mode: bool = True) -> BEiT:
        super().train(mode)
        self.tokenizer.eval()  # frozen, always
        return self

    def forward_beit(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Images (B, C, H, W) -> (logits at the masked positions (M, V), their token ids (M,), mask (B, N))."""
        if tuple(x.shape[-2:]) != (self.backbone.image_size,) * 2:
            raise ValueError(
                f"BEiT's tokenizer and ViT are built for {self.backbone.image_size} px images, got "
                f"{tuple(x.shape[-2:])}"
            )
        with torch.no_grad():
            targets = self.tokenizer.tokenize(x).flatten(1)  # (B, N)
        if mask is None:
            mask = beit_masking(len(x), self.grid, self.num_masked, self.min_block, self.aspect).to(x.device)
        tokens = self.backbone.forward_tokens(x, mask=mask)[:, 1:]  # (B, N, D)
        return self.head(tokens[mask]), targets[mask], mask

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        views, _ = batch
        x = views[0] if isinstance(views, (list, tuple)) else views
        logits, targets, mask = self.forward_beit(x)
        # the mean over the masked patches of the *global* batch (their count differs between processes)
        count = mask.sum().float()
        if is_distributed():
            count = count.clone()
            dist.all_reduce(count)
        loss = masked_token_loss(logits, targets, normalizer=count.clamp(min=1) / world_size())
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/token_acc", (logits.argmax(-1) == targets).float().mean())
        self.log("train/mask_ratio", mask.float().mean())
        # the ViT saw masked patches; embed sees the image: the monitors run embed on the view itself
        return {"loss": loss, "embed_input": x}
