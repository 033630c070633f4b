"""Multi-band images: multispectral satellite tiles (Sentinel-2's 13 bands, RGB + near infrared, ...), stacks
of microscopy channels, any (C, H, W) array stored as a TIFF file.

``MultiBandDataModule`` reads a folder of TIFF files with ``tifffile`` (band-interleaved ``(C, H, W)`` or
pixel-interleaved ``(H, W, C)``, any dtype: uint8, uint16 reflectances, int16, float32), normalizes every band
with its own mean and std, computed from the training files in one pass and cached, and augments with
``MultiBandViews`` (crops, flips, 90-degree rotations and brightness/contrast, valid for any band count), per
image in the workers or batched on the device (``batch_augment: true``). Backbones take ``in_channels = C``
(filled in from the data); pretrained RGB weights are adapted to C bands (``modules.backbones.adapt_first_conv``).

    train_dir/<class>/<tile>.tif     labelled (for the kNN monitor and the probe; ``val_dir`` alike)
    train_dir/**/<tile>.tif          unlabelled (``labelled: false``)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from lightning_ssl.data.datamodules import ImageDataModule
from lightning_ssl.data.datasets import apply_transform, list_image_folder
from lightning_ssl.data.transforms import MultiBandViews, ViewPreset, eval_transform

TIFF_EXTENSIONS = (".tif", ".tiff")


def _tifffile():
    try:
        import tifffile
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise ImportError("multi-band images are read with tifffile: pip install tifffile") from e
    return tifffile


def _band_axis(axes: str, shape: Sequence[int], path: Path) -> int | None:
    """The axis of a TIFF series that holds the bands: none for a 2-D image, the first for band-interleaved
    (``SYX``, ``QYX``: planar or one page per band), the last for pixel-interleaved (``YXS``)."""
    if len(shape) == 2:
        return None
    if len(shape) != 3:
        raise ValueError(
            f"TIFF file {str(path)!r} holds a {len(shape)}-D array {tuple(shape)} (axes {axes}); "
            "expected one image of (bands, height, width) or (height, width, bands)"
        )
    if axes.endswith("YX"):
        return 0
    if axes.startswith("YX"):
        return 2
    return int(np.argmin(shape))  # unlabelled axes: bands are the short one


def _open_error(path: Path, e: Exception) -> ValueError:
    hint = " (compressed TIFFs such as LZW or ZSTD need `pip install imagecodecs`)" if "imagecodecs" in str(e) else ""
    return ValueError(f"cannot read TIFF file {str(path)!r}: {e}{hint}")


def tiff_shape(path: str | os.PathLike) -> tuple[int, int, int]:
    """(bands, height, width) of a TIFF file, from its header only."""
    path = Path(path)
    try:
        with _tifffile().TiffFile(path) as tif:
            series = tif.series[0]
            axes, shape = series.axes, series.shape
    except Exception as e:
        raise _open_error(path, e) from e
    axis = _band_axis(axes, shape, path)
    if axis is None:
        return 1, shape[0], shape[1]
    rest = [s for i, s in enumerate(shape) if i != axis]
    return shape[axis], rest[0], rest[1]


def read_tiff(path: str | os.PathLike, bands: Sequence[int] | None = None) -> np.ndarray:
    """A TIFF file as a (C, H, W) array in its own dtype; ``bands`` picks band indices (0-based)."""
    path = Path(path)
    try:
        with _tifffile().TiffFile(path) as tif:
            series = tif.series[0]
            axes, array = series.axes, series.asarray()
    except Exception as e:
        raise _open_error(path, e) from e
    axis = _band_axis(axes, array.shape, path)
    array = array[None] if axis is None else np.moveaxis(array, axis, 0)
    if bands is not None:
        if max(bands) >= len(array) or min(bands) < 0:
            raise ValueError(f"bands {list(bands)} do not exist in {str(path)!r}, which has {len(array)} bands")
        array = array[list(bands)]
    return array


def band_statistics(
    paths: Sequence[str | os.PathLike], bands: Sequence[int] | None = None
) -> tuple[list[float], list[float]]:
    """Per-band mean and standard deviation over every pixel of ``paths`` (non-finite values, e.g. no-data NaNs,
    left out). Sums are taken in float64, exact enough for reflectances over millions of pixels. A band that is
    constant gets std 1 (normalization then only centres it)."""
    sums: list[np.ndarray] | None = None  # per band: finite values, their sum, their sum of squares
    for path in paths:
        x = read_tiff(path, bands)
        x = x.reshape(len(x), -1).astype(np.float64)
        if sums is None:
            sums = [np.zeros(len(x)) for _ in range(3)]
        elif len(x) != len(sums[0]):
            raise ValueError(f"{str(path)!r} has {len(x)} bands, the files before it {len(sums[0])}")
        finite = np.isfinite(x)
        x = np.where(finite, x, 0.0)
        sums[0] += finite.sum(1)
        sums[1] += x.sum(1)
        sums[2] += (x * x).sum(1)
    if sums is None:
        raise ValueError("no files to compute band statistics from")
    count, total, squares = sums
    if (count == 0).any():
        raise ValueError(f"bands {np.flatnonzero(count == 0).tolist()} have no finite value in any training file")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    std[std <= 1e-12 * np.maximum(np.abs(mean), 1.0)] = 1.0
    return mean.tolist(), std.tolist()


def resize_center_crop(x: Tensor, size: int) -> Tensor:
    """(C, H, W) float -> (C, size, size): shorter side to ``size`` (antialiased), then the central square."""
    if x.shape[-2:] == (size, size):
        return x
    return v2.functional.center_crop(v2.functional.resize(x, size, antialias=True), [size, size])


class MultiBandDataset(Dataset):
    """TIFF files as float32 (C, H, W) tensors of raw band values, with optional integer labels. Non-finite
    values (no-data) are replaced by ``fill`` (per band: the band means, which normalize to 0); ``size``
    resizes and centre-crops every image to ``size`` (equal shapes for batched augmentation).

    Args:
        paths: TIFF files.
        labels: Integer labels, one per file, or None.
        transform: Per-image transform on the float (C, H, W) tensor, called with a seeded generator.
        bands: Band indices to keep (0-based); None: all.
        fill: Per-band value replacing non-finite pixels (no-data); None: left as they are.
        size: Resize and centre-crop every image to this side; None: as stored.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        labels: Sequence[int] | None = None,
        transform: Callable | None = None,
        bands: Sequence[int] | None = None,
        fill: Sequence[float] | None = None,
        size: int | None = None,
    ) -> None:
        if len(paths) == 0:
            raise ValueError("dataset is empty: no TIFF files")
        self.paths = [Path(p) for p in paths]
        self.labels = list(labels) if labels is not None else None
        self.transform, self.bands, self.size = transform, (list(bands) if bands is not None else None), size
        self.fill = torch.tensor(list(fill), dtype=torch.float32).view(-1, 1, 1) if fill is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]):
        i, seed = key if isinstance(key, tuple) else (key, None)
        array = read_tiff(self.paths[i], self.bands)
        x = torch.from_numpy(array.astype(np.float32, copy=False))
        if self.fill is not None and array.dtype.kind == "f":
            x = torch.where(torch.isfinite(x), x, self.fill)
        if self.size is not None:
            x = resize_center_crop(x, self.size)
        return apply_transform(self.transform, x, seed), (self.labels[i] if self.labels is not None else -1)


def _colour_free(views: ViewPreset) -> bool:
    """Views made only of geometry, blur and normalization (valid on raw band values of any range)."""
    return all(
        v.get("jitter_prob", 0.8) == 0 and v.get("solarize_prob", 0.0) == 0 and v.get("grayscale_prob", 0.2) == 0
        for v in getattr(views, "views", [{}])
    )


class MultiBandDataModule(ImageDataModule):
    """A folder of multi-band TIFF files (e.g. 4-13 band GeoTIFF tiles), normalized per band with statistics
    computed from the training files.

    Args:
        train_dir: ``train_dir/<class>/*.tif`` (``labelled``) or any TIFFs under it.
        val_dir: labelled evaluation tiles (the kNN monitor and the online probe need them).
        bands: band indices to keep (0-based, e.g. ``[3, 2, 1, 7]`` for Sentinel-2 RGB + NIR); default all.
            ``channels`` (what the model sees) is their number, read from the first file when not given.
        image_size: side of the training views and evaluation images (tiles of other sizes are resized).
        views: a preset valid for any band count: ``MultiBandViews`` (default), or one without colour operations.
        mean: per-band normalization mean; default: computed from the training files (one pass, then cached in
            ``root/band_stats/<key>.json``, the key covering the file list with sizes and modification times and
            the bands, so changed data is measured again).
        std: per-band normalization std; default: computed with the mean.
        stats_max_files: measure the statistics on a seeded random subset of this many files; None: all.
        cache_stats: cache the measured statistics under ``root/band_stats``.
        verify_files: read every file's header before training (band count, readability).
        labelled: read ``train_dir/<class>/`` folders as labels.
        channels: bands the model sees; None: ``len(bands)``, or the first file's band count.
        num_classes: classes; None: the number of class folders.
        **kwargs: as for every ``ImageDataModule`` (``batch_size``, ``batch_augment``, ``val_bank_size``...).
    """

    eval_resizes_files = True  # files of any size: resized, then center-cropped

    def __init__(
        self,
        train_dir: str,
        val_dir: str | None = None,
        labelled: bool = True,
        image_size: int = 64,
        bands: list[int] | None = None,
        channels: int | None = None,
        num_classes: int | None = None,
        views: ViewPreset | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        stats_max_files: int | None = None,
        cache_stats: bool = True,
        verify_files: bool = True,
        **kwargs,
    ) -> None:
        self.train_dir, self.val_dir, self.verify_files = train_dir, val_dir, verify_files
        self.train_labelled = labelled
        self.bands = list(bands) if bands is not None else None
        self.stats_max_files, self.cache_stats = stats_max_files, cache_stats
        self.native_size = image_size  # tiles of other sizes are resized
        self.native_channels = self._band_count(train_dir, self.bands)
        if channels is not None and channels != self.native_channels:
            raise ValueError(
                f"channels={channels}, but the files in {train_dir!r} give {self.native_channels} bands"
                f"{' (bands: ' + str(self.bands) + ')' if self.bands else ''}; pick bands with `bands: [...]`"
            )
        views = views if views is not None else MultiBandViews()
        if not (getattr(views, "any_channels", False) or _colour_free(views)):
            raise ValueError(
                f"MultiBandDataModule gives raw band values of any range: its views must be valid for them, e.g. "
                f"MultiBandViews (brightness/contrast for any band count); {type(views).__name__} has RGB colour "
                f"operations (jitter, grayscale or solarization on [0, 1] images)"
            )
        if (mean is None) != (std is None):
            raise ValueError(
                "give both mean and std (one value per band), or neither to measure them on the training files"
            )
        if (
            mean is not None
            and std is not None
            and (len(mean) != self.native_channels or len(std) != self.native_channels)
        ):
            raise ValueError(
                f"mean and std need one value per band ({self.native_channels}), got {len(mean)} and {len(std)}"
            )
        super().__init__(
            image_size=image_size, channels=self.native_channels, views=views, mean=mean, std=std, **kwargs
        )
        self.labelled = labelled and val_dir is not None
        self._num_classes = num_classes
        self._stats: tuple[tuple[float, ...], tuple[float, ...]] | None = (
            (tuple(mean), tuple(std)) if mean and std else None
        )
        self._verified: set[str] = set()

    # -- what the model needs to know, before anything is built ------------------------------------------------------
    @staticmethod
    def _band_count(train_dir: str, bands: list[int] | None) -> int:
        paths, _, _ = list_image_folder(train_dir, labelled=False, extensions=TIFF_EXTENSIONS)
        count = tiff_shape(paths[0])[0]
        if bands is None:
            return count
        if not bands or max(bands) >= count or min(bands) < 0:
            raise ValueError(f"bands {bands} do not exist in {str(paths[0])!r}, which has {count} bands (0-based)")
        return len(bands)

    @classmethod
    def describe(cls, init_args: dict) -> dict[str, int | None]:
        train_dir = init_args.get("train_dir") or ""
        known = Path(train_dir).is_dir()
        num_classes = init_args.get("num_classes")
        if num_classes is None and known and init_args.get("labelled", True):
            num_classes = len(list_image_folder(train_dir, extensions=TIFF_EXTENSIONS)[2])
        return {
            "image_size": init_args.get("image_size") or 64,
            "channels": cls._band_count(train_dir, init_args.get("bands")) if known else init_args.get("channels"),
            "num_classes": num_classes,
        }

    @property
    def num_classes(self) -> int | None:  # type: ignore[override]  # a property over the class attribute
        if self._num_classes is None and (names := self.class_names) is not None:  # None: unlabelled
            self._num_classes = len(names)
        return self._num_classes

    @property
    def class_names(self) -> list[str] | None:
        return list_image_folder(self.train_dir, extensions=TIFF_EXTENSIONS)[2] if self.train_labelled else None

    # -- per-band statistics ---------------------------------------------------------------------------------------
    def _train_files(self) -> list[Path]:
        return list_image_folder(self.train_dir, labelled=False, extensions=TIFF_EXTENSIONS)[0]

    def stats_path(self) -> Path:
        """Where the statistics of the current training files are cached (the key changes with the files)."""
        root = Path(self.train_dir).resolve()
        files = [
            (str(p.relative_to(root)), *(lambda s: (s.st_size, s.st_mtime_ns))(p.stat()))
            for p in (q.resolve() for q in self._train_files())
        ]
        key = json.dumps([str(root), files, self.bands, self.stats_max_files, self.seed])
        return self.root / "band_stats" / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.json"

    def band_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per band: given, cached, or measured on the training files now (and cached)."""
        if self._stats is not None:
            return self._stats
        cache = self.stats_path() if self.cache_stats else None
        if cache is not None and cache.exists():
            saved = json.loads(cache.read_text())
            self._stats = tuple(saved["mean"]), tuple(saved["std"])
            return self._stats
        paths = self._train_files()
        if self.stats_max_files is not None and self.stats_max_files < len(paths):
            g = torch.Generator().manual_seed(self.seed)
            paths = [paths[i] for i in torch.randperm(len(paths), generator=g)[: self.stats_max_files].tolist()]
        rank_zero_info(
            f"MultiBandDataModule: measuring the mean and std of {self.channels} bands over {len(paths)} "
            f"training files{f' (cached in {cache})' if cache else ''}"
        )
        mean, std = band_statistics(paths, self.bands)
        if cache is not None:  # written atomically: processes may race to write the same values
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
            tmp.write_text(
                json.dumps(
                    {
                        "train_dir": str(self.train_dir),
                        "files": len(paths),
                        "bands": self.bands,
                        "mean": mean,
                        "std": std,
                    },
                    indent=1,
                )
            )
            tmp.replace(cache)
        self._stats = tuple(mean), tuple(std)
        return self._stats

    def norm_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.band_stats()

    # -- Lightning hooks -------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        for d in (self.train_dir, self.val_dir):
            if d is not None and not Path(d).is_dir():
                raise FileNotFoundError(f"image folder {d!r} does not exist")
        self.band_stats()  # one process measures and caches; the others read the cache in setup

    def eval_transform(self):
        if self.batch_augment:
            return None
        return eval_transform(self.image_size, *self.norm_stats(), resize=True)

    def make_dataset(self, split: str, transform) -> Dataset:
        folder = self.val_dir if split == "test" else self.train_dir
        if folder is None:
            raise ValueError(f"{type(self).__name__} has no val_dir to read the {split!r} split from")
        labelled = self.train_labelled if split == "train" else True
        paths, labels, classes = list_image_folder(folder, labelled=labelled, extensions=TIFF_EXTENSIONS)
        if labels is not None and self._num_classes is not None and len(classes) != self._num_classes:
            raise ValueError(f"{folder!r} has {len(classes)} class folders but num_classes={self._num_classes}")
        if self.verify_files and folder not in self._verified:
            for p in paths:
                bands = tiff_shape(p)[0]
                if (self.bands is None and bands != self.channels) or (
                    self.bands is not None and max(self.bands) >= bands
                ):
                    raise ValueError(
                        f"{str(p)!r} has {bands} bands; the data has {self.channels}"
                        f"{f' (bands {self.bands})' if self.bands else ''}"
                    )
            self._verified.add(folder)
        # equal shapes for collation when augmenting batched; per image, the transforms resize
        return MultiBandDataset(
            paths,
            labels,
            transform,
            self.bands,
            fill=self.norm_stats()[0],
            size=self.image_size if self.batch_augment else None,
        )
