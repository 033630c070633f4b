"""How an image becomes a network's input at evaluation time: the record checkpoints and exports carry.

A checkpoint of this library stores it (``checkpoint["preprocessing"]``, from the datamodule the run trained
with); ``lightning_ssl.load`` returns it as the backbone's transform, and every export writes it in its
ecosystem's own form (timm ``pretrained_cfg``, a Hugging Face ``preprocessor_config.json``, ONNX metadata, the
JSON beside a state dict), so a network trained on 28-px single-channel images is never fed 224-px RGB ones.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class Preprocessing:
    """Evaluation preprocessing of one image: to ``channels`` (1: luminance, 3: RGB), short side resized to
    ``resize_size`` px (``interpolation``, antialiased), center crop of ``image_size`` x ``image_size``, pixels
    scaled to [0, 1], then ``(x - mean) / std`` per channel. The DINO / MAE evaluation protocol is
    ``resize_size = 256`` for ``image_size = 224``; in-memory sets of one size use ``resize_size = image_size``.

    Calling it maps an image file path, a PIL image or a uint8 tensor (C, H, W) to float (channels, image_size,
    image_size), decoded and resized as the training run's evaluation batches were.

    Args:
        channels: channels the network reads (1 grayscale, 3 RGB; others for multi-band tiles).
        image_size: side of the square network input, in px.
        mean: per-channel mean subtracted from [0, 1] pixels (``channels`` values).
        std: per-channel standard deviation divided by (``channels`` values, > 0).
        resize_size: short side before the center crop, in px (>= ``image_size``; default ``image_size``).
        interpolation: resampling of the resize: "bicubic" (default), "bilinear" or "nearest".
    """

    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize_size: int = 0
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "resize_size", int(self.resize_size or self.image_size))
        if self.channels < 1 or self.image_size < 1:
            raise ValueError(f"channels and image_size must be >= 1, got {self.channels} and {self.image_size}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"mean and std need one value per channel ({self.channels}), got {len(self.mean)} and {len(self.std)}"
            )
        if min(self.std) <= 0:
            raise ValueError(f"std must be > 0, got {self.std}")
        if self.resize_size < self.image_size:
            raise ValueError(f"resize_size {self.resize_size} is smaller than the crop ({self.image_size})")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")

    @property
    def crop_pct(self) -> float:
        """``image_size / resize_size``: timm's name for the crop (1.0: no margin cut away)."""
        return self.image_size / self.resize_size

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON / YAML / a checkpoint's ``weights_only`` load)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        """The inverse of ``to_dict`` (unknown keys are ignored)."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def transform(self) -> Any:
        """The torchvision (v2) transform of a uint8 image (tensor (C, H, W) or PIL) to the network's input."""
        from torchvision.transforms import v2

        return v2.Compose(
            [
                v2.Resize(self.resize_size, interpolation=v2.InterpolationMode(self.interpolation), antialias=True),
                v2.CenterCrop(self.image_size),
                v2.ToImage(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(list(self.mean), list(self.std)),
            ]
        )

    def __call__(self, image: Any) -> Tensor:
        """An image file path, a PIL image or a uint8 tensor (C, H, W) -> float (channels, image_size,
        image_size). Files are decoded as the datamodules decode them (``lightning_ssl.data.datasets.read_image``)."""
        from lightning_ssl.data.datasets import match_channels, read_image

        if isinstance(image, (str, os.PathLike)):
            if not Path(image).is_file():
                raise FileNotFoundError(f"no image file at {str(image)!r}")
            x = read_image(image, self.channels)
        elif isinstance(image, Tensor):
            x = match_channels(image if image.ndim == 3 else image.unsqueeze(0), self.channels)
        else:  # a PIL image
            from torchvision.transforms.v2.functional import pil_to_tensor

            x = pil_to_tensor(image.convert("L" if self.channels == 1 else "RGB") if self.channels in (1, 3) else image)
        return self.transform()(x)
