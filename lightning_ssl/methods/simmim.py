"""SimMIM: A Simple Framework for Masked Image Modeling (Xie et al., CVPR 2022).

For each image x (one view: random resized crop + flip):
    mask = simmim_masks(B, grid, mask_patch, 0.6)     random masking of large patches (32 px at 192 px in the paper),
                                                      the same count for every sample, at the stem's resolution
    e = stem(x); e[mask] = mask token                 a learned token replaces the masked positions right after the
                                                      patch embedding (ViT, Swin) or stem (ConvNeXt)
    z = encoder(e)                                    *all* tokens go through the encoder (unlike MAE)
    x_hat = PixelShuffle(Conv1x1(z))                  one linear layer predicts every pixel of the stride x stride
                                                      area under each output position
    loss = mean |x_hat - x| over the masked pixels    L1 on raw pixels (losses/simmim.py)
Backbones: ``lightning_ssl.modules.vit.ViT`` (its own mask token, patch tokens as the feature map), or a timm model
(``TimmBackbone``, e.g. Swin or ConvNeXt) with a ``patch_embed`` or ``stem`` module, whose output is masked by a
forward hook before ``forward_features`` goes on; the last feature map's stride sets the head's pixel shuffle.
The reference's ViT-B recipe (configs/simmim/imagenet.yaml): layer scale 0.1, a shared relative position bias and no
absolute positions, depth-scaled init, gradient-norm clip 5.0, AdamW lr 1e-4 x batch/512.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_ssl.losses.simmim import simmim_loss
from lightning_ssl.methods.base import SSLMethod
from lightning_ssl.modules.backbones import Backbone
from lightning_ssl.modules.vit import ViT
from lightning_ssl.optim import WarmupCosineLR


def simmim_masks(
    batch_size: int,
    grid: tuple[int, int],
    mask_patch: int = 1,
    mask_ratio: float = 0.6,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(B, h, w) bool, True = masked, on a grid of h x w positions: squares of ``mask_patch`` x ``mask_patch``
    positions are masked at random, ceil(ratio x number of squares) of them in every sample."""
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must lie in (0, 1), got {mask_ratio}")
    h, w = grid
    if h % mask_patch or w % mask_patch:
        raise ValueError(f"a {h}x{w} grid does not divide into mask patches of {mask_patch}x{mask_patch}")
    gh, gw = h // mask_patch, w // mask_patch
    count = math.ceil(gh * gw * mask_ratio)
    order = torch.rand(batch_size, gh * gw, generator=generator).argsort(dim=1)
    mask = torch.zeros(batch_size, gh * gw, dtype=torch.bool)
    mask.scatter_(1, order[:, :count], True)
    return mask.view(batch_size, gh, gw).repeat_interleave(mask_patch, 1).repeat_interleave(mask_patch, 2)


@runtime_checkable
class _FeatureModel(Protocol):
    """A timm model: ``forward_features(x)`` gives its last feature map (NCHW, or NHWC for some)."""

    def forward_features(self, x: Tensor) -> Tensor: ...


def _is_nhwc(module: nn.Module) -> bool:
    fmt = getattr(module, "output_fmt", "NCHW")
    return getattr(fmt, "value", fmt) == "NHWC"


class SimMIM(SSLMethod):
    """SimMIM: mask large patches with a learned token, encode all tokens, regress the masked raw pixels (L1).

    Args:
        backbone: A ``lightning_ssl.modules.vit.ViT``, or a ``TimmBackbone`` (Swin, ConvNeXt) with a
            ``patch_embed`` or ``stem`` module whose output is masked by a forward hook.
        mask_patch_size: Side of the masked squares in pixels (32 at 192 px in the paper), a multiple of the stem's
            stride (the ViT's patch size; 4 for Swin and ConvNeXt) that divides the image size.
        mask_ratio: Fraction of the squares masked, in (0, 1) (0.6 in the paper).
        optimizer: Factory called with the parameter groups (no weight decay on biases and norm parameters);
            from a config, the ``class_path`` / ``init_args`` of any ``torch.optim`` optimizer. Default AdamW.
        scheduler: Factory called with the optimizer, stepped every optimizer step. Default ``WarmupCosineLR``
            (linear warm-up, then cosine over ``trainer.estimated_stepping_batches``); None: a constant LR.
    """

    def __init__(
        self,
        backbone: Backbone,
        mask_patch_size: int = 32,
        mask_ratio: float = 0.6,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        super().__init__(backbone, optimizer, scheduler)
        self.save_hyperparameters()
        inner = getattr(backbone, "model", backbone)
        self.stem_name = next(
            (n for n in ("patch_embed", "stem") if isinstance(getattr(inner, n, None), nn.Module)), None
        )
        if not isinstance(backbone, ViT) and (self.stem_name is None or not isinstance(inner, _FeatureModel)):
            raise ValueError(
                f"SimMIM needs a lightning_ssl.modules.vit.ViT or a timm model with a patch_embed or stem "
                f"module (TimmBackbone), got {type(backbone).__name__}"
            )
        channels, image_size = getattr(backbone, "in_channels", None), getattr(backbone, "image_size", None)
        if not isinstance(channels, int) or not isinstance(image_size, int):
            raise ValueError(f"SimMIM needs int in_channels and image_size on the backbone ({type(backbone).__name__})")
        self.channels, self.image_size = channels, image_size
        try:
            stem_channels, self.grid, out_channels, out_size = self._shapes()
        except RuntimeError as e:
            raise ValueError(
                f"SimMIM: the backbone cannot take {self.channels}-channel {self.image_size} px images: {e}"
            ) from e
        self.stem_stride = self.image_size // self.grid[0]
        if mask_patch_size % self.stem_stride or self.image_size % mask_patch_size:
            raise ValueError(
                f"mask_patch_size {mask_patch_size} must be a multiple of the stem's stride "
                f"({self.stem_stride} px) and divide the image size ({self.image_size} px)"
            )
        simmim_masks(1, self.grid, mask_patch_size // self.stem_stride, mask_ratio)  # validates the ratio
        self.out_stride = self.image_size // out_size
        if out_size * self.out_stride != self.image_size:
            raise ValueError(
                f"the backbone's last feature map ({out_size}x{out_size}) does not tile the {self.image_size} px image"
            )
        self.mask_patch_size, self.mask_ratio = mask_patch_size, mask_ratio
        self.mask_token: nn.Parameter | None = None  # a timm model's; a ViT has its own
        if isinstance(backbone, ViT):
            backbone.add_mask_token()
        else:
            self.mask_token = nn.Parameter(torch.zeros(stem_channels))
            nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder = nn.Sequential(
            nn.Conv2d(out_channels, self.out_stride**2 * self.channels, kernel_size=1), nn.PixelShuffle(self.out_stride)
        )

    def _inner(self) -> nn.Module:
        return getattr(self.backbone, "model", self.backbone)

    def _stem(self) -> nn.Module:
        if self.stem_name is None:
            raise RuntimeError("a ViT backbone has no stem to hook: its own mask token replaces the patches")
        return getattr(self._inner(), self.stem_name)

    def _features(self, x: Tensor) -> Tensor:
        inner = self._inner()
        if not isinstance(inner, _FeatureModel):
            raise RuntimeError(f"{type(inner).__name__} has no forward_features")  # refused in __init__
        return inner.forward_features(x)

    @torch.no_grad()
    def _shapes(self) -> tuple[int, tuple[int, int], int, int]:
        """(stem channels, stem grid, last feature map channels, its side) from one forward of a blank image."""
        x = torch.zeros(2, self.channels, self.image_size, self.image_size)
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            if isinstance(self.backbone, ViT):
                grid = self.backbone.grid_size
                return self.backbone.embed_dim, grid, self.backbone.embed_dim, grid[0]
            e, f = self._stem()(x), self._features(x)
        finally:
            self.backbone.train(was_training)
        e = e.permute(0, 3, 1, 2) if _is_nhwc(self._stem()) else e
        f = f.permute(0, 3, 1, 2) if _is_nhwc(self._inner()) else f
        return e.shape[1], (e.shape[2], e.shape[3]), f.shape[1], f.shape[2]

    def encode_masked(self, x: Tensor, mask: Tensor) -> Tensor:
        """Images (B, C, H, W) with ``mask`` (B, h, w) at the stem's resolution -> last feature map (B, D, H/s, W/s)."""
        if isinstance(self.backbone, ViT):
            tokens = self.backbone.forward_tokens(x, mask=mask.flatten(1))[:, 1:]  # (B, N, D), CLS dropped
            return tokens.transpose(1, 2).reshape(len(x), -1, *self.grid)
        stem, inner = self._stem(), self._inner()
        nhwc = _is_nhwc(stem)
        mask_token = self.mask_token
        if mask_token is None:
            raise RuntimeError("SimMIM's mask token for a timm model is missing")  # made in __init__

        def replace_masked(module: nn.Module, inputs: Any, e: Tensor) -> Tensor:
            m = mask.unsqueeze(-1) if nhwc else mask.unsqueeze(1)
            token = mask_token.to(e.dtype)
            return torch.where(m, token if nhwc else token.view(1, -1, 1, 1), e)

        handle = stem.register_forward_hook(replace_masked)
        try:
            f = self._features(x)
        finally:
            handle.remove()
        return f.permute(0, 3, 1, 2) if _is_nhwc(inner) else f

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        views, _ = batch
        x = views[0] if isinstance(views, (list, tuple)) else views
        if tuple(x.shape[-2:]) != (self.image_size,) * 2:
            raise ValueError(f"SimMIM's head is built for {self.image_size} px images, got {tuple(x.shape[-2:])}")
        mask = simmim_masks(len(x), self.grid, self.mask_patch_size // self.stem_stride, self.mask_ratio).to(x.device)
        x_hat = self.decoder(self.encode_masked(x, mask))
        s = self.stem_stride
        loss = simmim_loss(x_hat, x, mask.repeat_interleave(s, 1).repeat_interleave(s, 2))
        self.log("train/loss", loss, prog_bar=True)
        # the encoder saw masked images; embed sees the image itself: the monitors run embed on it
        return {"loss": loss, "embed_input": x}
