"""Segmentation data for the dense (per-pixel) probe: batches of ``(image (B, C, H, W) float, mask (B, H, W) long)``.

* ``CanvasSegmentationDataModule``: a segmentation set built deterministically from a labelled image dataset
  (Fashion-MNIST, MNIST, ... any ``ImageDataModule``): 2-4 items placed on a larger black canvas, every
  foreground pixel labelled with its item's class + 1, the background 0. Training canvases use the training
  images, evaluation canvases the test images.
* ``MaskFolderDataModule``: a folder of image/mask pairs of one's own::

      root/train/images/<name>.<png|jpg|...>    root/train/masks/<name>.png
      root/val/images/<name>.<png|jpg|...>      root/val/masks/<name>.png

  A mask is a one-channel PNG (mode L or P) of the image's size whose pixel values are class indices;
  255 marks pixels to ignore.

Both follow the ``ImageDataModule`` convention for evaluation: ``test_dataloader()`` returns the evaluation
loader and the training loader, unshuffled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_ssl.data.datamodules import IMAGENET_MEAN, IMAGENET_STD, ImageDataModule
from lightning_ssl.data.datasets import match_channels

IGNORE_INDEX = 255


def make_canvases(
    images: Tensor,
    labels: Tensor,
    count: int,
    canvas_size: int = 64,
    items: tuple[int, int] = (2, 4),
    threshold: int = 25,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Place random items on black canvases, deterministically (the same arguments give the same canvases).

    Args:
        images: uint8 items (N, C, h, w) or (N, h, w), on a dark background (Fashion-MNIST, MNIST).
        labels: (N,) item classes in [0, K).
        count: number of canvases.
        canvas_size: canvas side in pixels; at least the item side.
        items: (min, max) items per canvas, both included.
        threshold: an item pixel whose brightest channel exceeds this (0-255) is foreground; later items cover
            earlier ones where they overlap.
        seed: the random draw of items and positions.

    Returns:
        uint8 canvases (count, C, S, S) and uint8 masks (count, S, S): 0 background, item class + 1 elsewhere.
    """
    if images.ndim == 3:
        images = images.unsqueeze(1)
    n, c, h, w = images.shape
    if canvas_size < max(h, w):
        raise ValueError(f"canvas_size {canvas_size} is smaller than an item ({h}x{w})")
    if not 1 <= items[0] <= items[1]:
        raise ValueError(f"items must be (min, max) with 1 <= min <= max, got {items}")
    if count < 1 or n == 0:
        raise ValueError(f"need count >= 1 canvases and at least one item image, got {count} and {n}")
    g = torch.Generator().manual_seed(seed)
    canvases = torch.zeros(count, c, canvas_size, canvas_size, dtype=torch.uint8)
    masks = torch.zeros(count, canvas_size, canvas_size, dtype=torch.uint8)
    per_canvas = torch.randint(items[0], items[1] + 1, (count,), generator=g)
    for i in range(count):
        for j in torch.randint(0, n, (int(per_canvas[i]),), generator=g).tolist():
            top, left = (
                torch.randint(0, canvas_size - h + 1, (1,), generator=g).item(),
                torch.randint(0, canvas_size - w + 1, (1,), generator=g).item(),
            )
            fg = images[j].amax(0) > threshold  # (h, w)
            canvases[i, :, top : top + h, left : left + w][:, fg] = images[j][:, fg]
            masks[i, top : top + h, left : left + w][fg] = int(labels[j]) + 1
    return canvases, masks


def _loader(images: Tensor, masks: Tensor, mean: tuple, std: tuple, batch_size: int, workers: int) -> DataLoader:
    """Normalized float images and long masks, in order."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return DataLoader(
        TensorDataset(((images.float() / 255 - m) / s), masks.long()),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
    )


class CanvasSegmentationDataModule(L.LightningDataModule):
    """Segmentation canvases built from a labelled image datamodule (see the module docstring): background is
    class 0, an item of class c is class c + 1, so ``num_classes`` is the source's + 1.

    Args:
        source: the labelled ``ImageDataModule`` whose training / test images become the training / evaluation
            canvases (its ``channels``, ``image_size`` for the item side, and normalization are used).
        canvas_size: canvas side in pixels; default: 64/28 of the item side (64 for 28 px Fashion-MNIST).
        train_size: training canvases (the dense probe's training set).
        test_size: evaluation canvases.
        min_items: fewest items on a canvas.
        max_items: most items on a canvas (items may overlap; the later one is on top).
        threshold: brightness (0-255) above which an item pixel is foreground.
        batch_size: images per batch for feature extraction.
        num_workers: dataloader workers.
        seed: the canvases' random draw (the evaluation canvases use ``seed + 1``).
    """

    segmentation = True

    def __init__(
        self,
        source: ImageDataModule,
        canvas_size: int | None = None,
        train_size: int = 5000,
        test_size: int = 1000,
        min_items: int = 2,
        max_items: int = 4,
        threshold: int = 25,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if train_size < 1 or test_size < 1:
            raise ValueError(f"train_size and test_size must be >= 1, got {train_size} and {test_size}")
        self.source, self.train_size, self.test_size = source, train_size, test_size
        self.items, self.threshold, self.seed = (min_items, max_items), threshold, seed
        self.canvas_size = canvas_size or round(source.image_size * 64 / 28)
        self.batch_size, self.num_workers = batch_size, num_workers
        if source.num_classes is None:
            raise ValueError(f"{type(source).__name__} has no class labels to paint the canvases' masks with")
        self.num_classes = int(source.num_classes) + 1
        self.ignore_index = IGNORE_INDEX
        names = getattr(source, "class_names", None) or [str(i) for i in range(int(source.num_classes))]
        self.class_names = ["background", *names]
        self._data: dict[str, tuple[Tensor, Tensor]] = {}

    @classmethod
    def describe(cls, init_args: dict) -> dict[str, int | None]:
        from lightning_ssl.config import import_class

        src = init_args.get("source") or {}
        info = import_class(src["class_path"]).describe(dict(src.get("init_args") or {})) if "class_path" in src else {}
        size = init_args.get("canvas_size") or (round(info["image_size"] * 64 / 28) if info.get("image_size") else None)
        classes = info.get("num_classes")
        return {"image_size": size, "channels": info.get("channels"), "num_classes": classes + 1 if classes else None}

    def _split(self, split: str) -> tuple[Tensor, Tensor]:
        if split not in self._data:
            src = self.source
            images, labels = src.load_split("test" if split == "test" else "labelled_train")
            if labels is None:
                raise ValueError(f"{type(src).__name__}'s {split} split has no labels to paint the masks with")
            images = images.unsqueeze(1) if images.ndim == 3 else images
            images = match_channels(images, src.channels)
            if images.shape[-1] != src.image_size or images.shape[-2] != src.image_size:
                images = F.interpolate(images.float(), size=src.image_size, mode="bilinear", antialias=True)
                images = images.round().clamp(0, 255).to(torch.uint8)
            count = self.test_size if split == "test" else self.train_size
            seed = self.seed + (1 if split == "test" else 0)
            self._data[split] = make_canvases(images, labels, count, self.canvas_size, self.items, self.threshold, seed)
        return self._data[split]

    def prepare_data(self) -> None:
        self.source.prepare_data()

    def test_dataloader(self) -> list[DataLoader]:
        mean, std = self.source.norm_stats()
        return [
            _loader(*self._split(s), mean, std, self.batch_size, self.num_workers) for s in ("test", "labelled_train")
        ]


class MaskFolderDataModule(L.LightningDataModule):
    """Image/mask pairs from a folder (layout in the module docstring), resized to ``image_size`` (images
    bilinear, masks nearest). Every image needs its mask: a missing or differently sized mask is an error that
    names the file.

    Args:
        root: the folder holding ``train/`` and ``val/``, each with ``images/`` and ``masks/``.
        image_size: side of the square the images and masks are resized to, in pixels.
        channels: image channels (1 or 3).
        num_classes: number of classes; default: the largest class index in the training masks + 1.
        mean: per-channel normalization mean of the images in [0, 1] (default ImageNet's).
        std: per-channel normalization std (default ImageNet's).
        batch_size: images per batch for feature extraction.
        num_workers: dataloader workers.
    """

    segmentation = True

    def __init__(
        self,
        root: str,
        image_size: int = 224,
        channels: int = 3,
        num_classes: int | None = None,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.root, self.image_size, self.channels = Path(root), image_size, channels
        self._num_classes, self.batch_size, self.num_workers = num_classes, batch_size, num_workers
        self.mean, self.std = tuple(mean), tuple(std)
        if len(self.mean) != channels:
            self.mean, self.std = (
                (sum(self.mean) / len(self.mean),) * channels,
                (sum(self.std) / len(self.std),) * channels,
            )
        self.ignore_index = IGNORE_INDEX
        self._data: dict[str, tuple[Tensor, Tensor]] = {}

    @classmethod
    def describe(cls, init_args: dict) -> dict[str, Any]:
        return {
            "image_size": init_args.get("image_size") or 224,
            "channels": init_args.get("channels") or 3,
            "num_classes": init_args.get("num_classes"),
        }

    def prepare_data(self) -> None:
        for split in ("train", "val"):
            for sub in ("images", "masks"):
                if not (self.root / split / sub).is_dir():
                    raise FileNotFoundError(
                        f"{self.root / split / sub} is missing: a mask folder has train/images, train/masks, "
                        f"val/images and val/masks (see lightning_ssl.data.segmentation)"
                    )

    def _split(self, split: str) -> tuple[Tensor, Tensor]:
        if split in self._data:
            return self._data[split]
        import numpy as np
        from PIL import Image

        from lightning_ssl.data.datasets import list_image_folder, read_image

        self.prepare_data()
        files, _, _ = list_image_folder(self.root / split / "images", labelled=False)  # raises when empty
        images, masks = [], []
        for path in files:
            mask_path = self.root / split / "masks" / f"{path.stem}.png"
            if not mask_path.is_file():
                raise FileNotFoundError(
                    f"no mask for {path}: expected {mask_path} (a one-channel PNG of class indices)"
                )
            image = read_image(path, self.channels)
            mask = np.array(Image.open(mask_path))
            if mask.ndim != 2:
                raise ValueError(f"{mask_path} has {mask.shape[2]} channels: a mask is one channel of class indices")
            if tuple(mask.shape) != tuple(image.shape[-2:]):
                raise ValueError(
                    f"{mask_path} is {mask.shape[0]}x{mask.shape[1]} but its image {path} is "
                    f"{image.shape[-2]}x{image.shape[-1]}: a mask must have its image's size"
                )
            size = (self.image_size, self.image_size)
            images.append(F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True)[0])
            m = torch.from_numpy(mask.astype("int64"))[None, None].float()
            masks.append(F.interpolate(m, size=size, mode="nearest")[0, 0].to(torch.uint8))
        self._data[split] = (torch.stack(images).round().clamp(0, 255).to(torch.uint8), torch.stack(masks))
        return self._data[split]

    @property
    def num_classes(self) -> int:
        if self._num_classes is None:
            m = self._split("train")[1]
            valid = m[m != IGNORE_INDEX]
            self._num_classes = int(valid.max()) + 1 if valid.numel() else 1
        return self._num_classes

    def test_dataloader(self) -> list[DataLoader]:
        return [
            _loader(*self._split(s), self.mean, self.std, self.batch_size, self.num_workers) for s in ("val", "train")
        ]
