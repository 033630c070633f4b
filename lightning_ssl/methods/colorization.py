"""Colorization: Colorful Image Colorization (Zhang, Isola & Efros, ECCV 2016).

Given only the lightness L of an image, predict its colour ab (CIE Lab):
    L, ab = lab(x)                                  the batch converted to Lab on its device
    F = f(L)                                        backbone feature map (the representation kept downstream)
    Z = decoder(F)                                  ab at 1/``output_stride`` of the image resolution
    classification (the paper):  loss = sum_q -v(Z*) Z*_q log softmax(Z)_q
        Z* = soft encoding of the true ab over the Q in-gamut ab bins (Gaussian over the 5 nearest, sigma 5),
        v = class-rebalancing weight of the true bin (rare saturated colours count more, lambda = 0.5)
    regression (the paper's baseline):  loss = || Z - ab ||^2    (averages plausible colours: greyish results)
Colouring a grey image requires recognising what is in it (sky is blue, grass is green, a fire engine is red),
which is why the backbone learns semantic features. Predictions are decoded with the annealed mean (T = 0.38).

Input pipeline: the datamodule delivers normalized RGB; the method undoes the normalization (the datamodule's
``norm_stats``, kept as buffers so ``embed`` works after loading a checkpoint), converts to Lab and feeds the
backbone L / 50 - 1 repeated over its input channels, so the usual 3-channel backbone config works unchanged and
``embed`` takes the same normalized RGB batches as every other method.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_ssl.losses.colorization import ab_regression_loss, colorization_loss
from lightning_ssl.methods.base import SSLMethod
from lightning_ssl.modules.backbones import Backbone, feature_map
from lightning_ssl.modules.color import (
    AB_SCALE,
    L_MAX,
    ab_bins,
    decode_ab,
    encode_ab,
    lab_to_rgb,
    rebalance_weights,
    rgb_to_lab,
)
from lightning_ssl.modules.distributed import is_distributed
from lightning_ssl.optim import WarmupCosineLR


class ColorDecoder(nn.Module):
    """Feature map (B, D, h, w) -> (B, out_dim, H, W), (H, W) = ``size``: conv, bilinear upsampling to ``size``,
    conv, 1x1 conv.

    Args:
        in_dim: Channels D of the backbone's feature map.
        hidden_dim: Channels of the decoder's convolutions.
        out_dim: Output channels: the number of ab bins (classification) or 2 (regression).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        self.inp, self.refine = block(in_dim, hidden_dim), block(hidden_dim, hidden_dim)
        self.out = nn.Conv2d(hidden_dim, out_dim, 1)

    def forward(self, f: Tensor, size: tuple[int, int]) -> Tensor:
        f = F.interpolate(self.inp(f), size=size, mode="bilinear", align_corners=False)
        return self.out(self.refine(f))


class Colorization(SSLMethod):
    """Colorization: predict the ab channels of Lab from the L channel, by classification over quantized ab bins.

    Args:
        backbone: The encoder; it sees the L channel only (one input channel) and must give a feature map
            (a CNN / ResNet; ``ViT`` patch tokens work too).
        mode: ``"classification"`` over quantized ab bins (the paper) or ``"regression"`` of ab (the L2 baseline).
        grid_size: Side of the ab bins in Lab units (10 in the paper: 313 in-gamut bins).
        soft_encoding: Gaussian targets over the 5 nearest bins (sigma 5, the paper's) instead of the nearest bin.
        rebalance: Weight the classes by the inverse of their smoothed frequency (the paper's class rebalancing),
            from the ab histogram of all training batches seen so far (a buffer, all-reduced under DDP).
        rebalance_lambda: Mix of the empirical and the uniform distribution in the rebalancing weights, in [0, 1]
            (0.5 in the paper).
        annealed_temperature: T of the annealed-mean decoding of the ab distribution for pictures (0.38 in the
            paper).
        output_stride: Predict ab at 1/``output_stride`` of the image side (4 in the paper).
        decoder_dim: Channels of the decoder's convolutions.
        mean: The RGB normalization mean of the input batches; None: the datamodule's ``norm_stats()``.
        std: The RGB normalization std of the input batches; None: the datamodule's.
        optimizer: Factory called with the parameter groups (no weight decay on biases and norm parameters);
            from a config, the ``class_path`` / ``init_args`` of any ``torch.optim`` optimizer. Default AdamW.
        scheduler: Factory called with the optimizer, stepped every optimizer step. Default ``WarmupCosineLR``
            (linear warm-up, then cosine over ``trainer.estimated_stepping_batches``); None: a constant LR.
    """

    # buffers
    bins: Tensor  # (Q, 2) the ab bin centres
    bin_counts: Tensor  # (Q,) float64 ab histogram of the training batches so far
    rgb_mean: Tensor  # (1, 3, 1, 1) the input normalization
    rgb_std: Tensor  # (1, 3, 1, 1)

    def __init__(
        self,
        backbone: Backbone,
        mode: Literal["classification", "regression"] = "classification",
        grid_size: float = 10.0,
        soft_encoding: bool = True,
        rebalance: bool = True,
        rebalance_lambda: float = 0.5,
        annealed_temperature: float = 0.38,
        output_stride: int = 4,
        decoder_dim: int = 128,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        super().__init__(backbone, optimizer, scheduler)
        self.save_hyperparameters()
        if mode not in ("classification", "regression"):
            raise ValueError(f"mode must be 'classification' or 'regression', got {mode!r}")
        if output_stride < 1:
            raise ValueError(f"output_stride must be >= 1, got {output_stride}")
        if annealed_temperature <= 0:
            raise ValueError(f"annealed_temperature must be > 0, got {annealed_temperature}")
        if not 0.0 <= rebalance_lambda <= 1.0:
            raise ValueError(f"rebalance_lambda must lie in [0, 1], got {rebalance_lambda}")
        self.mode, self.soft_encoding, self.rebalance = mode, soft_encoding, rebalance
        self.rebalance_lambda, self.annealed_temperature = rebalance_lambda, annealed_temperature
        self.output_stride = output_stride
        self.register_buffer("bins", ab_bins(grid_size))  # (Q, 2)
        self.register_buffer("bin_counts", torch.zeros(len(self.bins), dtype=torch.float64))
        self.decoder = ColorDecoder(self.num_features, decoder_dim, len(self.bins) if mode == "classification" else 2)
        self._norm_given = mean is not None and std is not None
        self.register_buffer("rgb_mean", torch.tensor(list(mean) if mean is not None else [0.0] * 3).view(1, 3, 1, 1))
        self.register_buffer("rgb_std", torch.tensor(list(std) if std is not None else [1.0] * 3).view(1, 3, 1, 1))

    # -- input: normalized RGB -> Lab -> what the backbone sees ------------------------------------------------
    def setup(self, stage: str) -> None:
        norm_stats = getattr(getattr(self._trainer, "datamodule", None), "norm_stats", None)
        if not self._norm_given and norm_stats is not None:
            mean, std = norm_stats()
            if len(mean) == 3:
                self.rgb_mean.copy_(torch.tensor(mean).view(1, 3, 1, 1))
                self.rgb_std.copy_(torch.tensor(std).view(1, 3, 1, 1))

    def on_fit_start(self) -> None:
        channels = getattr(getattr(self.trainer, "datamodule", None), "channels", 3)
        if channels != 3:
            raise ValueError(f"colorization needs colour images (data.channels: 3), got {channels} channel(s)")
        super().on_fit_start()

    def to_lab(self, x: Tensor) -> Tensor:
        """Normalized RGB (B, 3, H, W) -> Lab (B, 3, H, W)."""
        return rgb_to_lab((x.float() * self.rgb_std + self.rgb_mean).clamp(0, 1))

    def backbone_input(self, lightness: Tensor) -> Tensor:
        """L (B, 1, H, W) in [0, 100] -> L / 50 - 1 repeated over the backbone's input channels."""
        c = getattr(self.backbone, "in_channels", 3) or 3
        return (lightness * (2 / L_MAX) - 1).expand(-1, c, -1, -1)

    def embed(self, x: Tensor) -> Tensor:
        """Backbone features (B, D) of the lightness of normalized RGB images ``x``."""
        return self.backbone(self.backbone_input(self.to_lab(x)[:, :1]))

    # -- the pretext task ---------------------------------------------------------------------------------------
    def predict_ab(self, lightness: Tensor) -> tuple[Tensor, Tensor]:
        """L (B, 1, H, W) -> decoder output (B, Q or 2, H/s, W/s) and the pooled features (B, D) (= ``embed``'s)."""
        fmap, pooled = feature_map(self.backbone, self.backbone_input(lightness))
        size = (lightness.shape[-2] // self.output_stride, lightness.shape[-1] // self.output_stride)
        return self.decoder(fmap, size), pooled

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        views, _ = batch
        lab = self.to_lab(views[0])
        lightness, ab = lab[:, :1], lab[:, 1:]
        pred, h = self.predict_ab(lightness)
        ab = F.adaptive_avg_pool2d(ab, (pred.shape[-2], pred.shape[-1]))  # ground truth at the prediction's resolution
        if self.mode == "regression":
            loss = ab_regression_loss(pred * AB_SCALE, ab, AB_SCALE)
        else:
            target = encode_ab(ab, self.bins, soft=self.soft_encoding)
            weights = self._update_rebalancing(ab) if self.rebalance else None
            loss = colorization_loss(pred, target, weights)
        self.log("train/loss", loss, prog_bar=True)
        return {"loss": loss, "features": h.detach()}

    @torch.no_grad()
    def _update_rebalancing(self, ab: Tensor) -> Tensor:
        """Add this batch to the ab histogram (summed over processes) and return the weights (Q,)."""
        counts = torch.bincount(encode_ab(ab, self.bins).flatten(), minlength=len(self.bins)).double()
        if is_distributed():
            torch.distributed.all_reduce(counts)
        self.bin_counts += counts
        return rebalance_weights(self.bin_counts, self.bins, self.rebalance_lambda)

    @torch.no_grad()
    def colorize(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Normalized RGB (B, 3, H, W) -> (grey input, colourized, original), each RGB in [0, 1]. The predicted
        ab is upsampled to full resolution and combined with the input's own L, as in the paper."""
        lab = self.to_lab(x)
        lightness = lab[:, :1]
        pred, _ = self.predict_ab(lightness)
        if self.mode == "regression":
            ab = pred.float() * AB_SCALE
        else:
            ab = decode_ab(pred, self.bins, self.annealed_temperature)
        ab = F.interpolate(ab, size=x.shape[-2:], mode="bilinear", align_corners=False)
        grey = lab_to_rgb(torch.cat([lightness, torch.zeros_like(ab)], dim=1))
        return grey, lab_to_rgb(torch.cat([lightness, ab], dim=1)), lab_to_rgb(lab)
