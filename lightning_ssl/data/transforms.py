"""Multi-view transforms and view presets.

A *view preset* holds the augmentation hyperparameters and builds the per-view transforms once the
datamodule knows the image size, channel count and normalization (so a YAML only states the recipe).
Two equivalent paths: per sample on uint8 tensors (C, H, W) with torchvision v2 in dataloader workers, or
batched on the device with kornia after the batch is transferred. Either way every view of every image gets
its own random crop and jitter (a single batched torchvision v2 call would share one crop across the batch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torchvision.transforms import v2


class MultiViewTransform:
    """Apply each transform of a list to the same input: returns a list of views."""

    def __init__(self, transforms: Sequence[Callable]) -> None:
        if not transforms:
            raise ValueError("MultiViewTransform needs at least one transform")
        self.transforms = list(transforms)

    def __call__(self, image: Any, *args: Any) -> list[Any]:
        return [t(image, *args) for t in self.transforms]  # args: e.g. the original sizes for a batched crop

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({i}): {t}" for i, t in enumerate(self.transforms))
        return f"{type(self).__name__}(\n{inner}\n)"


def blur_kernel(image_size: int) -> int:
    """Odd kernel of ~10% of the image side (SimCLR appendix A), at least 3."""
    k = max(3, int(0.1 * image_size))
    return k + 1 - k % 2


def augmented_view(
    image_size: int,
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    min_scale: float = 0.08,
    max_scale: float = 1.0,
    flip_prob: float = 0.5,
    vflip_prob: float = 0.0,
    rotate90: bool = False,
    jitter_prob: float = 0.8,
    jitter_strength: float = 1.0,
    grayscale_prob: float = 0.2,
    blur_prob: float = 0.5,
    solarize_prob: float = 0.0,
    size: int | None = None,
) -> v2.Compose:
    """One SimCLR-style view: random resized crop, flips, colour jitter (0.8s, 0.8s, 0.8s, 0.2s) with
    probability ``jitter_prob``, grayscale, Gaussian blur, solarization; then float + normalize.

    For ``channels != 3`` colour jitter keeps only brightness and contrast, and grayscale is skipped.
    ``size``: this view's output side (default ``image_size``), e.g. the small local crops of multi-crop."""
    if not 0 < min_scale <= max_scale <= 1:
        raise ValueError(f"crop scale must satisfy 0 < min_scale <= max_scale <= 1, got ({min_scale}, {max_scale})")
    image_size = size or image_size
    t: list[Any] = [v2.RandomResizedCrop(image_size, scale=(min_scale, max_scale), antialias=True)]
    if flip_prob > 0:
        t.append(v2.RandomHorizontalFlip(flip_prob))
    if vflip_prob > 0:
        t.append(v2.RandomVerticalFlip(vflip_prob))
    if rotate90:
        t.append(v2.RandomChoice([v2.RandomRotation((a, a)) for a in (0, 90, 180, 270)]))
    if jitter_prob > 0 and jitter_strength > 0:
        s = jitter_strength
        jitter = v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s) if channels == 3 else v2.ColorJitter(0.8 * s, 0.8 * s)
        t.append(v2.RandomApply([jitter], p=jitter_prob))
    if grayscale_prob > 0 and channels == 3:
        t.append(v2.RandomGrayscale(grayscale_prob))
    if blur_prob > 0:
        t.append(v2.RandomApply([v2.GaussianBlur(blur_kernel(image_size), sigma=(0.1, 2.0))], p=blur_prob))
    if solarize_prob > 0:
        t.append(v2.RandomSolarize(128, p=solarize_prob))
    t += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(t)


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float], resize: bool = True) -> v2.Compose:
    """Deterministic single view for evaluation: resize + center crop (if needed), float, normalize."""
    t: list[Any] = [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)] if resize else []
    t += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(t)


def batched_view(
    image_size: int,
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    min_scale: float = 0.08,
    max_scale: float = 1.0,
    flip_prob: float = 0.5,
    vflip_prob: float = 0.0,
    rotate90: bool = False,
    jitter_prob: float = 0.8,
    jitter_strength: float = 1.0,
    grayscale_prob: float = 0.2,
    blur_prob: float = 0.5,
    solarize_prob: float = 0.0,
    size: int | None = None,
) -> nn.Module:
    """The same view as ``augmented_view`` for a whole batch at once, each sample drawing its own random
    parameters: the random resized crop (``BatchedResizedCrop``: boxes drawn with respect to each image's
    original size, see ``lightning_ssl.data.batched``), then kornia. Takes float images in [0, 1] (B, C, H, W)
    on any device and optionally their original sizes (B, 2); outputs (B, C, size, size)."""
    import kornia.augmentation as K

    from lightning_ssl.data.batched import BatchedResizedCrop

    if not 0 < min_scale <= max_scale <= 1:
        raise ValueError(f"crop scale must satisfy 0 < min_scale <= max_scale <= 1, got ({min_scale}, {max_scale})")
    image_size = size or image_size
    crop = BatchedResizedCrop(image_size, scale=(min_scale, max_scale))
    t: list[nn.Module] = []
    if flip_prob > 0:
        t.append(K.RandomHorizontalFlip(p=flip_prob))
    if vflip_prob > 0:
        t.append(K.RandomVerticalFlip(p=vflip_prob))
    if rotate90:
        t.append(K.RandomRotation90(times=(0, 3), p=1.0))
    if jitter_prob > 0 and jitter_strength > 0:
        s = jitter_strength
        sat_hue = (0.8 * s, 0.2 * s) if channels == 3 else (0.0, 0.0)
        t.append(K.ColorJitter(0.8 * s, 0.8 * s, *sat_hue, p=jitter_prob))
    if grayscale_prob > 0 and channels == 3:
        t.append(K.RandomGrayscale(p=grayscale_prob))
    if blur_prob > 0:
        t.append(K.RandomGaussianBlur(blur_kernel(image_size), (0.1, 2.0), p=blur_prob))
    if solarize_prob > 0:
        t.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_prob))  # threshold 0.5 = 128/255
    t.append(K.Normalize(mean=torch.tensor(list(mean)), std=torch.tensor(list(std))))
    return BatchedView(crop, nn.Sequential(*t))


class BatchedView(nn.Module):
    """One batched view: the crop (which needs the original sizes) followed by the per-sample kornia ops."""

    def __init__(self, crop: nn.Module, rest: nn.Sequential) -> None:
        super().__init__()
        self.crop, self.rest = crop, rest

    def forward(self, images: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
        return self.rest(self.crop(images, sizes))


class ViewPreset:
    """An augmentation recipe: a list of per-view settings (the keyword arguments of ``augmented_view``).

    ``build`` gives the per-sample transform for dataloader workers, ``build_batched`` the equivalent batched
    module that a datamodule runs on the device after transfer (``batch_augment: true``)."""

    def __init__(self, views: Sequence[dict[str, Any]]) -> None:
        if not views:
            raise ValueError("a view preset needs at least one view")
        self.views = [dict(v) for v in views]

    def build(self, image_size: int, channels: int, mean: Sequence[float], std: Sequence[float]) -> MultiViewTransform:
        return MultiViewTransform([augmented_view(image_size, channels, mean, std, **v) for v in self.views])

    def build_batched(self, image_size: int, channels: int, mean: Sequence[float], std: Sequence[float]) -> MultiViewTransform:
        return MultiViewTransform([batched_view(image_size, channels, mean, std, **v) for v in self.views])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.views})"


class SimCLRViews(ViewPreset):
    """``num_views`` views from the SimCLR recipe (Chen et al., 2020, appendix A). ``blur_prob`` defaults to
    0.5 as on ImageNet; small-image configs (CIFAR, Fashion-MNIST) set it to 0 as the paper does."""

    def __init__(
        self,
        num_views: int = 2,
        min_scale: float = 0.08,
        max_scale: float = 1.0,
        flip_prob: float = 0.5,
        jitter_prob: float = 0.8,
        jitter_strength: float = 1.0,
        grayscale_prob: float = 0.2,
        blur_prob: float = 0.5,
        solarize_prob: float = 0.0,
    ) -> None:
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        view = dict(min_scale=min_scale, max_scale=max_scale, flip_prob=flip_prob, jitter_prob=jitter_prob,
                    jitter_strength=jitter_strength, grayscale_prob=grayscale_prob, blur_prob=blur_prob,
                    solarize_prob=solarize_prob)
        super().__init__([view] * num_views)


class MedicalViews(ViewPreset):
    """Views for medical images (X-ray, CT, pathology thumbnails): weak crops (scale >= 0.8), flips,
    brightness/contrast only (no hue, saturation, grayscale or solarization), light blur."""

    def __init__(self, num_views: int = 2, min_scale: float = 0.8, flip_prob: float = 0.5, jitter_prob: float = 0.5,
                 jitter_strength: float = 0.25, blur_prob: float = 0.2) -> None:
        view = dict(min_scale=min_scale, flip_prob=flip_prob, jitter_prob=jitter_prob, jitter_strength=jitter_strength,
                    grayscale_prob=0.0, blur_prob=blur_prob)
        super().__init__([view] * num_views)

    def build(self, image_size, channels, mean, std):
        return super().build(image_size, 1, mean, std)  # channels=1 form of the jitter: brightness/contrast

    def build_batched(self, image_size, channels, mean, std):
        return super().build_batched(image_size, 1, mean, std)


class SatelliteViews(ViewPreset):
    """Views for overhead imagery: orientation carries no meaning, so 90-degree rotations and both flips;
    brightness/contrast jitter for season and time of day; no grayscale."""

    def __init__(self, num_views: int = 2, min_scale: float = 0.2, jitter_prob: float = 0.8,
                 jitter_strength: float = 0.5, blur_prob: float = 0.0) -> None:
        view = dict(min_scale=min_scale, flip_prob=0.5, vflip_prob=0.5, rotate90=True, jitter_prob=jitter_prob,
                    jitter_strength=jitter_strength, grayscale_prob=0.0, blur_prob=blur_prob)
        super().__init__([view] * num_views)

    def build(self, image_size, channels, mean, std):
        return super().build(image_size, 1, mean, std)  # brightness/contrast only, whatever the band count

    def build_batched(self, image_size, channels, mean, std):
        return super().build_batched(image_size, 1, mean, std)


class ClassifierViews(ViewPreset):
    """One augmented view for supervised training (fine-tuning, linear evaluation): random resized crop and
    horizontal flip, no colour distortion."""

    def __init__(self, min_scale: float = 0.08, flip_prob: float = 0.5) -> None:
        super().__init__([dict(min_scale=min_scale, flip_prob=flip_prob, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)])


class MultiCropViews(ViewPreset):
    """Multi-crop views of DINO (Caron et al., 2021, sec. 3.1 and appendix; after SwAV): ``global_crops`` large
    crops (area ``global_scale`` of the image, side ``global_size``, default the image size) followed by
    ``local_crops`` small ones (area ``local_scale``, side ``local_size``; default 3/7 of the image side rounded
    to a multiple of 4, i.e. 96 px for 224 px images, 12 px for 28 px). The teacher sees the global crops only.

    DINO's asymmetric recipe: flip, colour jitter w.p. ``jitter_prob`` (strength 0.5: (0.4, 0.4, 0.4, 0.1)),
    grayscale w.p. 0.2; Gaussian blur w.p. ``global_blur[0]`` on the first global crop and ``global_blur[1]`` on
    the others, which are also solarized w.p. ``solarize_prob``; blur w.p. ``local_blur`` on local crops."""

    def __init__(
        self,
        global_crops: int = 2,
        local_crops: int = 6,
        global_size: int | None = None,
        local_size: int | None = None,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        flip_prob: float = 0.5,
        jitter_prob: float = 0.8,
        jitter_strength: float = 0.5,
        grayscale_prob: float = 0.2,
        global_blur: tuple[float, float] = (1.0, 0.1),
        local_blur: float = 0.5,
        solarize_prob: float = 0.2,
    ) -> None:
        if global_crops < 1 or local_crops < 0:
            raise ValueError(f"need global_crops >= 1 and local_crops >= 0, got {global_crops} and {local_crops}")
        common = dict(flip_prob=flip_prob, jitter_prob=jitter_prob, jitter_strength=jitter_strength,
                      grayscale_prob=grayscale_prob)
        views = [dict(common, min_scale=global_scale[0], max_scale=global_scale[1], size=global_size,
                      blur_prob=global_blur[0] if i == 0 else global_blur[1],
                      solarize_prob=0.0 if i == 0 else solarize_prob) for i in range(global_crops)]
        views += [dict(common, min_scale=local_scale[0], max_scale=local_scale[1], size=local_size, blur_prob=local_blur)
                  for _ in range(local_crops)]
        super().__init__(views)
        self.global_crops, self.local_crops, self.local_size = global_crops, local_crops, local_size

    def views_for(self, image_size: int) -> list[dict[str, Any]]:
        """The per-view settings with the default local crop size filled in for ``image_size``."""
        local = self.local_size or max(4, 4 * round(image_size * 3 / 28))
        return [dict(v, size=local) if i >= self.global_crops else v for i, v in enumerate(self.views)]

    def build(self, image_size: int, channels: int, mean: Sequence[float], std: Sequence[float]) -> MultiViewTransform:
        return MultiViewTransform([augmented_view(image_size, channels, mean, std, **v) for v in self.views_for(image_size)])

    def build_batched(self, image_size: int, channels: int, mean: Sequence[float], std: Sequence[float]) -> MultiViewTransform:
        return MultiViewTransform([batched_view(image_size, channels, mean, std, **v) for v in self.views_for(image_size)])
