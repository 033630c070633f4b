"""Datasets yielding ``(transform(image), label)`` from uint8 tensors held in memory or image files on disk."""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Sequence, Sized
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"RIFF", b"II*\x00", b"MM\x00*")


def dataset_len(dataset: Dataset) -> int:
    """The number of items of a map-style ``dataset``; refuses one without a length (an iterable stream)."""
    if not isinstance(dataset, Sized):
        raise TypeError(f"{type(dataset).__name__} has no length: a map-style dataset (with __len__) is needed")
    return len(dataset)


def match_channels(image: Tensor, channels: int) -> Tensor:
    """(C, H, W) or (B, C, H, W) uint8/float image to ``channels`` (1 <-> 3 by luminance / repetition)."""
    c = image.shape[-3]
    if c == channels:
        return image
    if c == 1 and channels == 3:
        return image.expand(*image.shape[:-3], 3, *image.shape[-2:])
    if c == 3 and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        gray = (image.float() * w).sum(-3, keepdim=True)
        return gray.round().clamp(0, 255).to(torch.uint8) if image.dtype == torch.uint8 else gray
    if c == 4 and channels == 3:  # RGBA: drop alpha
        return image[..., :3, :, :]
    raise ValueError(f"cannot convert an image with {c} channels to {channels} channels")


def apply_transform(transform: Callable | None, x: Tensor, seed: int | None) -> Tensor:
    """``transform(x)``; with a ``seed`` (from ``SeededSampler``) its random draws are a function of the seed
    alone, without disturbing the caller's random state."""
    if transform is None:
        return x
    if seed is None:
        return transform(x)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(x)


class TensorImageDataset(Dataset):
    """Images as a uint8 tensor (N, C, H, W) or (N, H, W), labels as (N,) (or None for unlabelled data).
    Indexed by ``i`` or by ``(i, augmentation_seed)``.

    Args:
        images: uint8 images (N, C, H, W) or (N, H, W).
        labels: Integer labels (N,), or None for unlabelled data.
        transform: Per-image transform (a view preset's ``build``), called with a seeded generator; None: the
            image as a float tensor.
        channels: Channels to return (grayscale repeated / colour reduced to luminance); None: as stored.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor | None = None,
        transform: Callable | None = None,
        channels: int | None = None,
    ) -> None:
        if images.ndim == 3:
            images = images.unsqueeze(1)
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W) or (N, H, W), got shape {tuple(images.shape)}")
        if len(images) == 0:
            raise ValueError("dataset is empty: no images")
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.transform = images, labels, transform
        self.channels = channels or images.shape[1]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]):
        i, seed = key if isinstance(key, tuple) else (key, None)
        x = apply_transform(self.transform, match_channels(self.images[i], self.channels), seed)
        return x, (int(self.labels[i]) if self.labels is not None else -1)


def check_image_file(path: Path) -> None:
    """Cheap pre-flight check (size and magic bytes) so a broken file is reported before training starts."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise ValueError(f"cannot read image file {str(path)!r}: {e}") from e
    if not head:
        raise ValueError(f"image file {str(path)!r} is empty (0 bytes)")
    if not head.startswith(_MAGIC):
        raise ValueError(f"file {str(path)!r} is not a PNG/JPEG/GIF/BMP/WEBP/TIFF image (unrecognized header)")


def read_image(path: str | os.PathLike, channels: int) -> Tensor:
    """Decode an image file to uint8 (channels, H, W), naming the file if it is corrupt or truncated."""
    mode = ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY if channels == 1 else ImageReadMode.UNCHANGED
    try:
        data = torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)
        return decode_image(data, mode=mode)
    except Exception as e:  # torchvision raises RuntimeError with decoder-specific text
        try:  # formats torchvision cannot decode (BMP, TIFF): fall back to Pillow
            from PIL import Image

            with Image.open(path) as im:
                im = im.convert("RGB" if channels == 3 else "L")
                arr = torch.from_numpy(np.asarray(im).copy())
            return arr.permute(2, 0, 1) if arr.ndim == 3 else arr.unsqueeze(0)
        except Exception:
            raise ValueError(f"cannot decode image file {str(path)!r} (corrupt or truncated?): {e}") from e


def decode_resized(
    data: bytes | memoryview | str | os.PathLike, channels: int, size: int, name: str | None = None
) -> tuple[Tensor, Tensor]:
    """Decode an image (file bytes or a path) and resize it to ``size x size`` (a squash, aspect ratio not kept)
    as uint8 (channels, size, size); also returns the original (height, width), from which the batched crop
    draws its boxes (see ``lightning_ssl.data.batched``). Errors name ``name`` (default: the path).

    torchvision decodes (libjpeg-turbo) and resizes (antialiased bilinear on uint8), the fastest pair for
    ImageNet-sized files; a JPEG at least twice ``size`` on both sides is first decoded at 1/2, 1/4 or 1/8 of
    its side by Pillow (``draft``: DCT scaling, never below ``size``), which makes large photos cheap."""
    from torchvision.transforms.v2 import functional as F

    what = name or (str(data) if isinstance(data, (str, os.PathLike)) else "image bytes")
    raw = Path(data).read_bytes() if isinstance(data, (str, os.PathLike)) else bytes(data)
    try:
        x, height, width = _decode_for_size(raw, channels, size)
    except Exception as e:  # torchvision raises RuntimeError, Pillow OSError / SyntaxError / ValueError
        raise ValueError(f"cannot decode image {what!r} (corrupt or truncated?): {e}") from e
    x = F.resize(match_channels(x, channels), [size, size], antialias=True)
    return x, torch.tensor([height, width], dtype=torch.float32)  # (not contiguous: collate copies it anyway)


def _decode_for_size(raw: bytes, channels: int, size: int) -> tuple[Tensor, int, int]:
    import io

    from PIL import Image

    mode = "RGB" if channels == 3 else "L"
    if raw[:3] == b"\xff\xd8\xff":
        with Image.open(io.BytesIO(raw)) as im:
            width, height = im.size
            if min(width, height) >= 2 * size:  # DCT-scaled decoding
                im.draft(mode, (size, size))
                arr = torch.from_numpy(np.asarray(im.convert(mode)).copy())
                return (arr.permute(2, 0, 1) if arr.ndim == 3 else arr.unsqueeze(0)), height, width
        x = decode_image(
            torch.frombuffer(bytearray(raw), dtype=torch.uint8),
            mode=ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY,
        )
        return x, height, width
    try:
        x = decode_image(
            torch.frombuffer(bytearray(raw), dtype=torch.uint8),
            mode=ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY,
        )
    except RuntimeError:  # formats torchvision cannot decode (BMP, TIFF): Pillow
        with Image.open(io.BytesIO(raw)) as im:
            arr = torch.from_numpy(np.asarray(im.convert(mode)).copy())
        x = arr.permute(2, 0, 1) if arr.ndim == 3 else arr.unsqueeze(0)
    return x, x.shape[-2], x.shape[-1]


def image_paths(paths: Sequence[str | os.PathLike], verify: bool = True) -> list[Path]:
    """``paths`` as ``Path``s, refusing an empty list and, with ``verify``, any file that is not a readable image."""
    if len(paths) == 0:
        raise ValueError("dataset is empty: no image files")
    out = [Path(p) for p in paths]
    if verify:
        for p in out:
            check_image_file(p)
    return out


class FileImageDataset(Dataset):
    """Image files with optional integer labels; decoding errors name the offending file.

    ``decode_size``: for the batched device augmentation, items are dicts ``{"image": uint8 (C, S, S),
    "label", "size": original (height, width)}`` (``decode_resized``) instead of ``(transform(image), label)``.

    Args:
        paths: Image files.
        labels: Integer labels, one per file, or None.
        transform: Per-image transform, called with a seeded generator.
        channels: Channels to decode to (1: grayscale, 3: RGB).
        verify: Open every file's header up front, naming any unreadable one.
        decode_size: Side to resize to as uint8 for the batched device augmentation; None: apply ``transform``.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        labels: Sequence[int] | None = None,
        transform: Callable | None = None,
        channels: int = 3,
        verify: bool = True,
        decode_size: int | None = None,
    ) -> None:
        self.paths = image_paths(paths, verify)
        self.labels, self.transform, self.channels = (list(labels) if labels is not None else None), transform, channels
        self.decode_size = decode_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]):
        i, seed = key if isinstance(key, tuple) else (key, None)
        label = self.labels[i] if self.labels is not None else -1
        if self.decode_size is not None:
            x, size = decode_resized(self.paths[i], self.channels, self.decode_size)
            return {"image": x, "label": label, "size": size}
        x = apply_transform(self.transform, read_image(self.paths[i], self.channels), seed)
        return x, label


class EncodedImageDataset(Dataset):
    """Image files as their raw bytes, ``{"data": uint8 (nbytes,), "label"}``, for decoding on the device
    (``decode: device``; ``lightning_ssl.data.batched.decode_jpeg_batch``): workers only read files.

    Args:
        paths: Image files (JPEG for nvJPEG decoding).
        labels: Integer labels, one per file, or None.
        verify: Check up front that every file exists and is readable.
    """

    def __init__(
        self, paths: Sequence[str | os.PathLike], labels: Sequence[int] | None = None, verify: bool = True
    ) -> None:
        self.paths = image_paths(paths, verify)
        self.labels = list(labels) if labels is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]):
        i = key[0] if isinstance(key, tuple) else key
        data = torch.frombuffer(bytearray(self.paths[i].read_bytes()), dtype=torch.uint8)
        return {"data": data, "label": self.labels[i] if self.labels is not None else -1}


def list_image_folder(
    root: str | os.PathLike, labelled: bool = True, extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> tuple[list[Path], list[int] | None, list[str]]:
    """Files of an ImageFolder: ``root/<class>/<image>`` (labelled) or every image under ``root`` (unlabelled);
    ``extensions``: the file name endings that count as images."""
    exts = tuple(e.lower() for e in extensions)
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"image folder {str(root)!r} is not a directory")
    if not labelled:
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in exts and p.is_file())
        if not paths:
            raise ValueError(f"image folder {str(root)!r} contains no images ({', '.join(exts)})")
        return paths, None, []
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise ValueError(f"image folder {str(root)!r} has no class sub-folders (expected root/<class>/<image>)")
    paths, labels = [], []
    for i, c in enumerate(classes):
        files = sorted(p for p in (root / c).rglob("*") if p.suffix.lower() in exts and p.is_file())
        paths += files
        labels += [i] * len(files)
    if not paths:
        raise ValueError(f"image folder {str(root)!r} has class folders {classes[:5]} but no images in them")
    return paths, labels, classes


def read_idx(path: str | os.PathLike) -> Tensor:
    """Read an IDX file (MNIST format), gzipped or not, as a uint8 tensor."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{str(path)!r} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{str(path)!r} is truncated: expected {int(np.prod(shape))} values, found {arr.size}")
    return torch.from_numpy(arr.reshape(shape).copy())
