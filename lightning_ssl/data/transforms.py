"""Multi-view transforms and view presets.

A *view preset* holds the augmentation hyperparameters and builds the per-view transforms once the
datamodule knows the image size, channel count and normalization (so a YAML only states the recipe).
Two equivalent paths: per sample on uint8 tensors (C, H, W) with torchvision v2 in dataloader workers, or
batched on the device with kornia after the batch is transferred. Either way every view of every image gets
its own random crop and jitter (a single batched torchvision v2 call would share one crop across the batch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.transforms import v2


class MultiViewTransform:
    """Apply each transform of a list to the same input: returns a list of views.

    Args:
        transforms: One transform per view.
    """

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


@dataclass(frozen=True)
class ViewSpec:
    """One view's augmentation settings: the keyword arguments of ``augmented_view`` and ``batched_view``, checked
    once for both paths.

    Args:
        min_scale: smallest crop area, as a fraction of the image (SimCLR: 0.08; DINO's local crops: 0.05).
        max_scale: largest crop area fraction, in (min_scale, 1] (DINO's local crops: 0.4).
        flip_prob: probability of a horizontal flip (0.5).
        vflip_prob: probability of a vertical flip (satellite and medical images; 0 for natural images).
        rotate90: rotate by a random multiple of 90 degrees (orientation-free images such as satellite tiles).
        jitter_prob: probability of colour jitter (SimCLR: 0.8).
        jitter_strength: s in SimCLR's jitter (0.8s, 0.8s, 0.8s, 0.2s) (SimCLR on ImageNet: 1.0; CIFAR: 0.5).
        grayscale_prob: probability of converting to gray, RGB only (SimCLR: 0.2).
        blur_prob: probability of a Gaussian blur with sigma in [0.1, 2] (SimCLR ImageNet: 0.5; small images: 0).
        solarize_prob: probability of solarization at threshold 128 (BYOL's second view: 0.2).
        size: this view's output side in pixels (default the image size), e.g. 96 for multi-crop's local views.
        jitter: explicit (brightness, contrast, saturation, hue), instead of ``jitter_strength``'s ratios
            (DINO and BYOL: (0.4, 0.4, 0.2, 0.1)).
        interpolation: the crop's resampling, ``"bilinear"`` or ``"bicubic"`` (DINO: bicubic).
    """

    min_scale: float = 0.08
    max_scale: float = 1.0
    flip_prob: float = 0.5
    vflip_prob: float = 0.0
    rotate90: bool = False
    jitter_prob: float = 0.8
    jitter_strength: float = 1.0
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    solarize_prob: float = 0.0
    size: int | None = None
    jitter: Sequence[float] | None = None
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if not 0 < self.min_scale <= self.max_scale <= 1:
            raise ValueError(
                f"crop scale must satisfy 0 < min_scale <= max_scale <= 1, got ({self.min_scale}, {self.max_scale})"
            )
        _interpolation(self.interpolation)
        self.colour_jitter()

    def colour_jitter(self) -> tuple[float, float, float, float]:
        """(brightness, contrast, saturation, hue): ``jitter`` if given, else SimCLR's ratios times the strength."""
        return _jitter(self.jitter, self.jitter_strength)


def augmented_view(
    image_size: int, channels: int, mean: Sequence[float], std: Sequence[float], **settings: Any
) -> v2.Compose:
    """One SimCLR-style view: random resized crop, flips, colour jitter (0.8s, 0.8s, 0.8s, 0.2s) with
    probability ``jitter_prob``, grayscale, Gaussian blur, solarization; then float + normalize.

    ``settings`` are ``ViewSpec``'s fields. For ``channels != 3`` colour jitter keeps only brightness and contrast,
    and grayscale is skipped."""
    v = ViewSpec(**settings)
    image_size = v.size or image_size
    mode = _interpolation(v.interpolation)
    crop = v2.RandomResizedCrop(image_size, scale=(v.min_scale, v.max_scale), antialias=True, interpolation=mode)
    t: list[Any] = [crop]
    if v.flip_prob > 0:
        t.append(v2.RandomHorizontalFlip(v.flip_prob))
    if v.vflip_prob > 0:
        t.append(v2.RandomVerticalFlip(v.vflip_prob))
    if v.rotate90:
        t.append(v2.RandomChoice([v2.RandomRotation((a, a)) for a in (0, 90, 180, 270)]))
    b, c, sat, hue = v.colour_jitter()
    if v.jitter_prob > 0 and (b or c or sat or hue):
        jitter = v2.ColorJitter(b, c, sat, hue) if channels == 3 else v2.ColorJitter(b, c)
        t.append(v2.RandomApply([jitter], p=v.jitter_prob))
    if v.grayscale_prob > 0 and channels == 3:
        t.append(v2.RandomGrayscale(v.grayscale_prob))
    if v.blur_prob > 0:
        t.append(v2.RandomApply([v2.GaussianBlur(blur_kernel(image_size), sigma=(0.1, 2.0))], p=v.blur_prob))
    if v.solarize_prob > 0:
        t.append(v2.RandomSolarize(128, p=v.solarize_prob))
    t += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(t)


def _jitter(jitter: Sequence[float] | None, strength: float) -> tuple[float, float, float, float]:
    if jitter is not None:
        if len(jitter) != 4 or min(jitter) < 0:
            raise ValueError(f"jitter must be 4 values >= 0 (brightness, contrast, saturation, hue), got {jitter}")
        brightness, contrast, saturation, hue = (float(v) for v in jitter)
        return brightness, contrast, saturation, hue
    s = strength
    return 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s


def _interpolation(name: str):
    modes = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}
    if name not in modes:
        raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {name!r}")
    return modes[name]


EVAL_RESIZE_RATIO = 256 / 224  # DINO's and MAE's kNN / linear protocols: resize to 256, center-crop 224


def eval_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    resize: bool = True,
    resize_ratio: float = EVAL_RESIZE_RATIO,
) -> v2.Compose:
    """Deterministic single view for evaluation: float, normalize; when the images are not already
    ``image_size`` (``resize``), the protocol of DINO and MAE: resize the short side to ``resize_ratio`` x
    ``image_size`` (256 for 224) with bicubic interpolation, then center-crop ``image_size``."""
    t: list[Any] = (
        [
            v2.Resize(round(image_size * resize_ratio), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(image_size),
        ]
        if resize
        else []
    )
    t += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(t)


def batched_view(
    image_size: int, channels: int, mean: Sequence[float], std: Sequence[float], **settings: Any
) -> nn.Module:
    """The same view as ``augmented_view`` (``settings``: ``ViewSpec``'s fields) for a whole batch at once, each
    sample drawing its own random parameters: the random resized crop (``BatchedResizedCrop``: boxes drawn with
    respect to each image's original size, see ``lightning_ssl.data.batched``), then kornia. Takes float images in
    [0, 1] (B, C, H, W) on any device and optionally their original sizes (B, 2); outputs (B, C, size, size). The
    batched crop resamples with roi_align (area-averaging) whatever the ``interpolation``."""
    import kornia.augmentation as K

    from lightning_ssl.data.batched import BatchedResizedCrop

    v = ViewSpec(**settings)
    image_size = v.size or image_size
    crop = BatchedResizedCrop(image_size, scale=(v.min_scale, v.max_scale))
    t: list[nn.Module] = []
    if v.flip_prob > 0:
        t.append(K.RandomHorizontalFlip(p=v.flip_prob))
    if v.vflip_prob > 0:
        t.append(K.RandomVerticalFlip(p=v.vflip_prob))
    if v.rotate90:
        t.append(K.RandomRotation90(times=(0, 3), p=1.0))
    b, c, sat, hue = v.colour_jitter()
    if v.jitter_prob > 0 and (b or c or sat or hue):
        t.append(K.ColorJitter(b, c, *((sat, hue) if channels == 3 else (0.0, 0.0)), p=v.jitter_prob))
    if v.grayscale_prob > 0 and channels == 3:
        t.append(K.RandomGrayscale(p=v.grayscale_prob))
    if v.blur_prob > 0:
        t.append(K.RandomGaussianBlur(blur_kernel(image_size), (0.1, 2.0), p=v.blur_prob))
    if v.solarize_prob > 0:
        t.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=v.solarize_prob))  # threshold 0.5 = 128/255
    t.append(K.Normalize(mean=torch.tensor(list(mean)), std=torch.tensor(list(std))))
    return BatchedView(crop, nn.Sequential(*t))


class BatchedView(nn.Module):
    """One batched view: the crop (which needs the original sizes) followed by the per-sample kornia ops.

    Args:
        crop: The batched random resized crop (``BatchedResizedCrop``).
        rest: The per-sample kornia operations that follow it (flip, colour jitter, blur, ...).
    """

    def __init__(self, crop: nn.Module, rest: nn.Sequential) -> None:
        super().__init__()
        self.crop, self.rest = crop, rest

    def forward(self, images: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
        return self.rest(self.crop(images, sizes))


class ViewPreset:
    """An augmentation recipe: a list of per-view settings (the keyword arguments of ``augmented_view``).

    ``build`` gives the per-sample transform for dataloader workers, ``build_batched`` the equivalent batched
    module that a datamodule runs on the device after transfer (``batch_augment: true``).

    Args:
        views: One dict of ``augmented_view`` keyword arguments per view.
    """

    def __init__(self, views: Sequence[dict[str, Any]]) -> None:
        if not views:
            raise ValueError("a view preset needs at least one view")
        self.views = [dict(v) for v in views]

    def build(self, image_size: int, channels: int, mean: Sequence[float], std: Sequence[float]) -> MultiViewTransform:
        return MultiViewTransform([augmented_view(image_size, channels, mean, std, **v) for v in self.views])

    def build_batched(
        self, image_size: int, channels: int, mean: Sequence[float], std: Sequence[float]
    ) -> MultiViewTransform:
        return MultiViewTransform([batched_view(image_size, channels, mean, std, **v) for v in self.views])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.views})"


class SimCLRViews(ViewPreset):
    """``num_views`` views from the SimCLR recipe (Chen et al., 2020, appendix A). ``blur_prob`` defaults to
    0.5 as on ImageNet; small-image configs (CIFAR, Fashion-MNIST) set it to 0 as the paper does. ``size``: the
    side of the views (default the image size); training on smaller crops than the test images costs less per
    step and, with random-resized crops, matches the objects' apparent size at test time (Touvron et al., 2019,
    "FixRes").

    Args:
        num_views: Views made of every image (2 for SimCLR).
        min_scale: Smallest crop area as a fraction of the image (0.08 in the paper).
        max_scale: Largest crop area as a fraction of the image (1.0).
        flip_prob: Probability of a horizontal flip (0.5).
        jitter_prob: Probability of the colour jitter (0.8 in the paper).
        jitter_strength: s, scaling brightness, contrast and saturation by 0.8 s and hue by 0.2 s (1.0 in the
            paper; 0.5 on CIFAR; 1.5 in the Fashion-MNIST configs).
        grayscale_prob: Probability of converting to grayscale (0.2 in the paper).
        blur_prob: Probability of a Gaussian blur (0.5 on ImageNet, 0 on CIFAR in the paper).
        solarize_prob: Probability of solarization (0 in SimCLR; 0.2 in the Fashion-MNIST configs).
        size: Side of the views in pixels; None: the image size.
    """

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
        size: int | None = None,
    ) -> None:
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        if size is not None and size < 1:
            raise ValueError(f"size must be a positive side length, got {size}")
        view = dict(
            min_scale=min_scale,
            max_scale=max_scale,
            flip_prob=flip_prob,
            jitter_prob=jitter_prob,
            jitter_strength=jitter_strength,
            grayscale_prob=grayscale_prob,
            blur_prob=blur_prob,
            solarize_prob=solarize_prob,
            size=size,
        )
        super().__init__([view] * num_views)


class MedicalViews(ViewPreset):
    """Views for medical images (X-ray, CT, pathology thumbnails): weak crops (scale >= 0.8), flips,
    brightness/contrast only (no hue, saturation, grayscale or solarization), light blur.

    Args:
        num_views: Views made of every image (2 for SimCLR).
        min_scale: Smallest crop area as a fraction of the image (0.8: weak crops keep the finding in view).
        flip_prob: Probability of a horizontal flip.
        jitter_prob: Probability of the brightness/contrast jitter.
        jitter_strength: Strength s of the jitter (brightness and contrast 0.8 s).
        blur_prob: Probability of a light Gaussian blur.
    """

    def __init__(
        self,
        num_views: int = 2,
        min_scale: float = 0.8,
        flip_prob: float = 0.5,
        jitter_prob: float = 0.5,
        jitter_strength: float = 0.25,
        blur_prob: float = 0.2,
    ) -> None:
        view = dict(
            min_scale=min_scale,
            flip_prob=flip_prob,
            jitter_prob=jitter_prob,
            jitter_strength=jitter_strength,
            grayscale_prob=0.0,
            blur_prob=blur_prob,
        )
        super().__init__([view] * num_views)

    def build(self, image_size, channels, mean, std):
        return super().build(image_size, 1, mean, std)  # channels=1 form of the jitter: brightness/contrast

    def build_batched(self, image_size, channels, mean, std):
        return super().build_batched(image_size, 1, mean, std)


class SatelliteViews(ViewPreset):
    """Views for overhead imagery: orientation carries no meaning, so 90-degree rotations and both flips;
    brightness/contrast jitter for season and time of day; no grayscale. For 1- or 3-channel images; the same
    recipe for any band count (multispectral tiles) is ``MultiBandViews``.

    Args:
        num_views: Views made of every image (2 for SimCLR).
        min_scale: Smallest crop area as a fraction of the image.
        jitter_prob: Probability of the brightness/contrast jitter.
        jitter_strength: Strength s of the jitter (brightness and contrast 0.8 s).
        blur_prob: Probability of a Gaussian blur.
    """

    def __init__(
        self,
        num_views: int = 2,
        min_scale: float = 0.2,
        jitter_prob: float = 0.8,
        jitter_strength: float = 0.5,
        blur_prob: float = 0.0,
    ) -> None:
        view = dict(
            min_scale=min_scale,
            flip_prob=0.5,
            vflip_prob=0.5,
            rotate90=True,
            jitter_prob=jitter_prob,
            jitter_strength=jitter_strength,
            grayscale_prob=0.0,
            blur_prob=blur_prob,
        )
        super().__init__([view] * num_views)

    def build(self, image_size, channels, mean, std):
        return super().build(image_size, 1, mean, std)  # brightness/contrast only, whatever the band count

    def build_batched(self, image_size, channels, mean, std):
        return super().build_batched(image_size, 1, mean, std)


class BYOLViews(ViewPreset):
    """BYOL's two asymmetric views (Grill et al., 2020, appendix B, table 6): random resized crop (bicubic), flip,
    colour jitter (0.4, 0.4, 0.2, 0.1) w.p. 0.8, grayscale w.p. 0.2; Gaussian blur w.p. 1.0 on the first view and
    0.1 on the second, solarization w.p. 0.0 on the first and 0.2 on the second. ``blur`` / ``solarize`` give the
    per-view probabilities (small images often use no blur: ``blur: [0.0, 0.0]``).

    Args:
        min_scale: Smallest crop area as a fraction of the image (0.08 in the paper).
        max_scale: Largest crop area as a fraction of the image (1.0).
        flip_prob: Probability of a horizontal flip (0.5).
        jitter_prob: Probability of the colour jitter (0.8 in the paper).
        jitter: Brightness, contrast, saturation and hue jitter ((0.4, 0.4, 0.2, 0.1) in the paper).
        grayscale_prob: Probability of grayscale (0.2 in the paper).
        blur: Blur probability of the first and the second view ((1.0, 0.1) in the paper).
        solarize: Solarization probability of the first and the second view ((0.0, 0.2) in the paper).
        interpolation: Resampling of the crops: ``"bicubic"`` (the paper's) or ``"bilinear"``.
    """

    def __init__(
        self,
        min_scale: float = 0.08,
        max_scale: float = 1.0,
        flip_prob: float = 0.5,
        jitter_prob: float = 0.8,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
        grayscale_prob: float = 0.2,
        blur: tuple[float, float] = (1.0, 0.1),
        solarize: tuple[float, float] = (0.0, 0.2),
        interpolation: str = "bicubic",
    ) -> None:
        common = dict(
            min_scale=min_scale,
            max_scale=max_scale,
            flip_prob=flip_prob,
            jitter_prob=jitter_prob,
            jitter=jitter,
            grayscale_prob=grayscale_prob,
            interpolation=interpolation,
        )
        super().__init__([dict(common, blur_prob=blur[i], solarize_prob=solarize[i]) for i in range(2)])


class ClassifierViews(ViewPreset):
    """One augmented view for supervised training (fine-tuning, linear evaluation): random resized crop and
    horizontal flip, no colour distortion.

    Args:
        min_scale: Smallest crop area as a fraction of the image (0.08, the usual ImageNet value).
        flip_prob: Probability of a horizontal flip.
    """

    def __init__(self, min_scale: float = 0.08, flip_prob: float = 0.5) -> None:
        super().__init__(
            [dict(min_scale=min_scale, flip_prob=flip_prob, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)]
        )


class MultiCropViews(ViewPreset):
    """Multi-crop views of DINO (Caron et al., 2021, sec. 3.1 and appendix; after SwAV): ``global_crops`` large
    crops (area ``global_scale`` of the image, side ``global_size``, default the image size) followed by
    ``local_crops`` small ones (area ``local_scale``, side ``local_size``; default 3/7 of the image side rounded
    to a multiple of 4, i.e. 96 px for 224 px images, 12 px for 28 px). The teacher sees the global crops only.

    DINO's asymmetric recipe (``DataAugmentationDINO`` of facebookresearch/dino): crops resized with bicubic
    interpolation, flip, colour jitter (0.4, 0.4, 0.2, 0.1) w.p. ``jitter_prob``, grayscale w.p. 0.2; Gaussian blur
    w.p. ``global_blur[0]`` on the first global crop and ``global_blur[1]`` on the others, which are also solarized
    w.p. ``solarize_prob``; blur w.p. ``local_blur`` on local crops; 8 local crops by default, as the reference.
    ``jitter_strength`` instead of ``jitter`` gives SimCLR's ratios (0.8s, 0.8s, 0.8s, 0.2s).

    Args:
        global_crops: Large crops, seen by teacher and student (2 in DINO).
        local_crops: Small crops, seen by the student only (8 in DINO; 6 in SwAV).
        global_size: Side of the global crops in pixels; None: the image size (224).
        local_size: Side of the local crops; None: 3/7 of the image side, a multiple of 4 (96 at 224 px).
        global_scale: Area range of the global crops ((0.4, 1.0) in DINO; (0.14, 1.0) in SwAV).
        local_scale: Area range of the local crops ((0.05, 0.4) in DINO).
        flip_prob: Probability of a horizontal flip.
        jitter_prob: Probability of the colour jitter (0.8).
        jitter: Brightness, contrast, saturation and hue jitter ((0.4, 0.4, 0.2, 0.1) in DINO).
        jitter_strength: If given, SimCLR's ratios (0.8 s, 0.8 s, 0.8 s, 0.2 s) instead of ``jitter``.
        grayscale_prob: Probability of grayscale (0.2).
        global_blur: Blur probability of the first and the other global crops ((1.0, 0.1) in DINO).
        local_blur: Blur probability of the local crops (0.5 in DINO).
        solarize_prob: Solarization probability of the global crops after the first (0.2 in DINO).
        interpolation: Resampling of the crops: ``"bicubic"`` (DINO's) or ``"bilinear"``.
    """

    def __init__(
        self,
        global_crops: int = 2,
        local_crops: int = 8,
        global_size: int | None = None,
        local_size: int | None = None,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        flip_prob: float = 0.5,
        jitter_prob: float = 0.8,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
        jitter_strength: float | None = None,
        grayscale_prob: float = 0.2,
        global_blur: tuple[float, float] = (1.0, 0.1),
        local_blur: float = 0.5,
        solarize_prob: float = 0.2,
        interpolation: str = "bicubic",
    ) -> None:
        if global_crops < 1 or local_crops < 0:
            raise ValueError(f"need global_crops >= 1 and local_crops >= 0, got {global_crops} and {local_crops}")
        common = dict(
            flip_prob=flip_prob,
            jitter_prob=jitter_prob,
            grayscale_prob=grayscale_prob,
            interpolation=interpolation,
            **(dict(jitter_strength=jitter_strength) if jitter_strength is not None else dict(jitter=jitter)),
        )
        views = [
            dict(
                common,
                min_scale=global_scale[0],
                max_scale=global_scale[1],
                size=global_size,
                blur_prob=global_blur[0] if i == 0 else global_blur[1],
                solarize_prob=0.0 if i == 0 else solarize_prob,
            )
            for i in range(global_crops)
        ]
        views += [
            dict(common, min_scale=local_scale[0], max_scale=local_scale[1], size=local_size, blur_prob=local_blur)
            for _ in range(local_crops)
        ]
        super().__init__(views)
        self.global_crops, self.local_crops, self.local_size = global_crops, local_crops, local_size

    def views_for(self, image_size: int) -> list[dict[str, Any]]:
        """The per-view settings with the default local crop size filled in for ``image_size``."""
        local = self.local_size or max(4, 4 * round(image_size * 3 / 28))
        return [dict(v, size=local) if i >= self.global_crops else v for i, v in enumerate(self.views)]

    def build(self, image_size: int, channels: int, mean: Sequence[float], std: Sequence[float]) -> MultiViewTransform:
        return MultiViewTransform(
            [augmented_view(image_size, channels, mean, std, **v) for v in self.views_for(image_size)]
        )

    def build_batched(
        self, image_size: int, channels: int, mean: Sequence[float], std: Sequence[float]
    ) -> MultiViewTransform:
        return MultiViewTransform(
            [batched_view(image_size, channels, mean, std, **v) for v in self.views_for(image_size)]
        )


# -- any band count: multi-band / multispectral images ------------------------------------------------------------


class RandomBrightnessContrast(nn.Module):
    """Brightness and contrast jitter defined for any number of bands (torchvision's colour jitter takes 1 or 3
    channels; hue and saturation have no meaning beyond RGB). With probability ``p`` a sample is scaled by ``b ~ U[1 -
    brightness, 1 + brightness]`` (illumination: time of day, sun angle) and its contrast stretched about each band's
    spatial mean by ``c ~ U[1 - contrast, 1 + contrast]``: ``x -> c (b x - m) + m``, ``m`` the band means of ``b x``.
    ``per_band``: draw ``b`` and ``c`` for every band (changes the spectral signature); default one pair for all
    bands (keeps band ratios). Values are not clamped: raw reflectances or radiances have no fixed range.
    Takes float (C, H, W) or (B, C, H, W), each sample drawing its own factors.

    Args:
        brightness: Half-width of the brightness factor's range, in [0, 1) (0.4).
        contrast: Half-width of the contrast factor's range, in [0, 1) (0.4).
        p: Probability that a sample is jittered.
        per_band: Draw the factors for every band separately.
    """

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, p: float = 0.8, per_band: bool = False) -> None:
        super().__init__()
        if not (0 <= brightness < 1 and 0 <= contrast < 1 and 0 <= p <= 1):
            raise ValueError(f"need 0 <= brightness, contrast < 1 and 0 <= p <= 1, got {brightness}, {contrast}, {p}")
        self.brightness, self.contrast, self.p, self.per_band = brightness, contrast, p, per_band

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = x.ndim == 3
        x = x.unsqueeze(0) if single else x
        b, c = x.shape[:2]
        shape = (b, c if self.per_band else 1, 1, 1)
        on = torch.rand(b, 1, 1, 1, device=x.device) < self.p
        gain = 1 + self.brightness * (2 * torch.rand(shape, device=x.device) - 1)
        stretch = 1 + self.contrast * (2 * torch.rand(shape, device=x.device) - 1)
        gain, stretch = torch.where(on, gain, 1.0).to(x.dtype), torch.where(on, stretch, 1.0).to(x.dtype)
        x = x * gain
        mean = x.mean((-2, -1), keepdim=True)
        x = (x - mean) * stretch + mean
        return x[0] if single else x

    def extra_repr(self) -> str:
        return f"brightness={self.brightness}, contrast={self.contrast}, p={self.p}, per_band={self.per_band}"


class RandomRot90(nn.Module):
    """A rotation by a random multiple of 90 degrees (exact: ``torch.rot90``), per sample, any band count.
    Takes square (C, H, W) or (B, C, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            return torch.rot90(x, int(torch.randint(4, ())), (-2, -1))
        k = torch.randint(4, (x.shape[0],), device=x.device)
        out = x.clone()
        for turns in (1, 2, 3):
            picked = k == turns
            out[picked] = torch.rot90(x[picked], turns, (-2, -1))
        return out


def multiband_view(
    image_size: int,
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    min_scale: float = 0.2,
    max_scale: float = 1.0,
    flip_prob: float = 0.5,
    vflip_prob: float = 0.5,
    rotate90: bool = True,
    jitter_prob: float = 0.8,
    brightness: float = 0.4,
    contrast: float = 0.4,
    per_band_jitter: bool = False,
    blur_prob: float = 0.0,
    size: int | None = None,
    batched: bool = False,
) -> nn.Module:
    """One view valid for any band count: random resized crop, flips, 90-degree rotations (all bands alike),
    brightness/contrast (``RandomBrightnessContrast``), optional Gaussian blur (per band), then per-band
    normalization. No hue, saturation, grayscale or solarization: they are defined for RGB only.

    Per sample (``batched=False``): a (C, H, W) tensor; integer images are scaled to [0, 1] first as in the RGB
    presets, float ones (raw band values, as ``MultiBandDataModule`` gives) are used as they are. ``batched``:
    the same view for (B, C, H, W) float batches on any device (kornia geometry), every sample drawing its own
    parameters."""
    if not 0 < min_scale <= max_scale <= 1:
        raise ValueError(f"crop scale must satisfy 0 < min_scale <= max_scale <= 1, got ({min_scale}, {max_scale})")
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"need one mean and std per band: {channels} bands, {len(mean)} means, {len(std)} stds")
    side = size or image_size
    jitter = RandomBrightnessContrast(brightness, contrast, jitter_prob, per_band_jitter)
    if batched:
        import kornia.augmentation as K

        t: list[nn.Module] = [K.RandomResizedCrop((side, side), scale=(min_scale, max_scale))]
        t += [K.RandomHorizontalFlip(p=flip_prob)] if flip_prob > 0 else []
        t += [K.RandomVerticalFlip(p=vflip_prob)] if vflip_prob > 0 else []
        t += [RandomRot90()] if rotate90 else []
        t += [jitter] if jitter_prob > 0 and (brightness > 0 or contrast > 0) else []
        t += [K.RandomGaussianBlur(blur_kernel(side), (0.1, 2.0), p=blur_prob)] if blur_prob > 0 else []
        t.append(K.Normalize(mean=torch.tensor(list(mean)), std=torch.tensor(list(std))))
        return nn.Sequential(*t)
    p: list[Any] = [
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomResizedCrop(side, scale=(min_scale, max_scale), antialias=True),
    ]
    p += [v2.RandomHorizontalFlip(flip_prob)] if flip_prob > 0 else []
    p += [v2.RandomVerticalFlip(vflip_prob)] if vflip_prob > 0 else []
    p += [RandomRot90()] if rotate90 else []
    p += [jitter] if jitter_prob > 0 and (brightness > 0 or contrast > 0) else []
    p += [v2.RandomApply([v2.GaussianBlur(blur_kernel(side), sigma=(0.1, 2.0))], p=blur_prob)] if blur_prob > 0 else []
    p.append(v2.Normalize(list(mean), list(std)))
    return v2.Compose(p)


class MultiBandViews(ViewPreset):
    """Views for multi-band images (multispectral satellite tiles, 4-13 band GeoTIFFs) or any channel count:
    the satellite recipe (overhead imagery has no up: 90-degree rotations and both flips; brightness/contrast
    for season and time of day) with operations valid for any number of bands (see ``multiband_view``).
    ``per_band_jitter``: independent brightness/contrast per band; ``jitter_prob: 0`` turns colour jitter off.

    Args:
        num_views: Views made of every image (2 for SimCLR).
        min_scale: Smallest crop area as a fraction of the image.
        max_scale: Largest crop area as a fraction of the image.
        flip_prob: Probability of a horizontal flip.
        vflip_prob: Probability of a vertical flip.
        rotate90: Rotate by a random multiple of 90 degrees.
        jitter_prob: Probability of the brightness/contrast jitter; 0: off.
        brightness: Half-width of the brightness factor's range.
        contrast: Half-width of the contrast factor's range.
        per_band_jitter: Independent brightness/contrast per band.
        blur_prob: Probability of a Gaussian blur.
    """

    any_channels = True  # valid for every band count (see check_views_channels)

    def __init__(
        self,
        num_views: int = 2,
        min_scale: float = 0.2,
        max_scale: float = 1.0,
        flip_prob: float = 0.5,
        vflip_prob: float = 0.5,
        rotate90: bool = True,
        jitter_prob: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        per_band_jitter: bool = False,
        blur_prob: float = 0.0,
    ) -> None:
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        RandomBrightnessContrast(brightness, contrast, jitter_prob)  # checks the ranges now, not at the first batch
        view = dict(
            min_scale=min_scale,
            max_scale=max_scale,
            flip_prob=flip_prob,
            vflip_prob=vflip_prob,
            rotate90=rotate90,
            jitter_prob=jitter_prob,
            brightness=brightness,
            contrast=contrast,
            per_band_jitter=per_band_jitter,
            blur_prob=blur_prob,
        )
        super().__init__([view] * num_views)

    def build(self, image_size: int, channels: int, mean: Sequence[float], std: Sequence[float]) -> MultiViewTransform:
        return MultiViewTransform([multiband_view(image_size, channels, mean, std, **v) for v in self.views])

    def build_batched(
        self, image_size: int, channels: int, mean: Sequence[float], std: Sequence[float]
    ) -> MultiViewTransform:
        return MultiViewTransform(
            [multiband_view(image_size, channels, mean, std, batched=True, **v) for v in self.views]
        )


def check_views_channels(views: Any, channels: int) -> None:
    """Raise a clear error before training if ``views`` cannot augment ``channels``-channel images: the colour
    jitter of the RGB presets (torchvision's, per image) is defined for 1 or 3 channels; presets marked
    ``any_channels`` (``MultiBandViews``) and views without colour jitter take any count."""
    if channels in (1, 3) or getattr(views, "any_channels", False):
        return
    jittered = [
        v for v in getattr(views, "views", []) if v.get("jitter_prob", 0.8) > 0 and v.get("jitter_strength", 1.0) > 0
    ]
    if jittered:
        raise ValueError(
            f"{type(views).__name__} applies colour jitter, which is defined for 1- or 3-channel images, "
            f"but the data has "
            f"{channels} channels: use MultiBandViews "
            f"(crops, flips, 90-degree rotations and brightness/contrast for any "
            f"band count), or turn the jitter off (jitter_prob: 0)"
        )
