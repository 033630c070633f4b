"""Streaming image datasets on Lightning's ``litdata``: millions of images read as large chunks from a local
disk or an object store, with deterministic, resumable sampling sharded over processes and nodes.

Once: ``optimize_images`` (``lightning-ssl-data optimize --input my_images/ --output chunks/``) writes an image
folder (``root/<class>/<image>``, or any folder without labels) or an image-text table (CSV/JSONL with image
paths and captions) into litdata chunks. Each item keeps the original file's bytes (re-encoded only with
``max_side``), its label, a caption for image-text tables, its index in the source and its relative path (for
error messages). The items are shuffled with a seed before they are written, so every chunk holds a random
mix of classes (litdata shuffles chunks and items within a few chunks at a time, so class-sorted chunks would
give class-sorted batches). Every image is decoded on the way in, and a file that does not decode stops the
run with its name; the chunks are written into a temporary folder next to ``output`` and renamed at the end,
so a failed or interrupted run leaves an existing ``output`` untouched and never a half-written one.

Then: ``StreamingImageDataModule(input_dir="chunks/" or "s3://bucket/chunks")`` streams them. litdata splits the
chunks over processes (and nodes) and dataloader workers, shuffles by (seed, epoch), and its
``StreamingDataLoader`` has a ``state_dict``, which Lightning saves in every checkpoint: a run resumed in the
middle of an epoch continues with the next batch. Workers decode and resize to ``decode_size`` for the batched
device augmentation (``batch_augment: true``, see ``lightning_ssl.data.batched``), or apply the per-image
views seeded by (seed, epoch, item index).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_ssl.data.datamodules import IMAGENET_MEAN, IMAGENET_STD, FileDecoding, ImageDataModule, collate_images
from lightning_ssl.data.datasets import apply_transform, dataset_len, decode_resized, list_image_folder, match_channels
from lightning_ssl.data.sampling import mix_seed

META_FILE = "lightning_ssl.json"  # written beside litdata's index.json
FORMAT = "lightning_ssl.images/1"


def _litdata():
    try:
        import litdata
    except ImportError as e:  # an optional extra
        raise ImportError("streaming datasets need litdata: pip install 'lightning-ssl[stream]'") from e
    return litdata


def is_remote(path: str) -> bool:
    return "://" in str(path) or str(path).startswith("local:")


# -- writing --------------------------------------------------------------------------------------------------
class _ItemWriter:
    """The function litdata's ``optimize`` calls per item (index into ``items``). It never raises: an unreadable
    image is recorded in ``errors_dir`` and written as an empty placeholder (a worker that raises would leave
    litdata's other workers running), and ``optimize_images`` then fails and discards the chunks."""

    def __init__(
        self, items: list[tuple], root: Path, captions: bool, verify: bool, max_side: int | None, errors_dir: Path
    ) -> None:
        self.items, self.root, self.captions, self.verify, self.max_side = items, root, captions, verify, max_side
        self.errors_dir = errors_dir

    def __call__(self, k: int) -> dict[str, Any]:
        index, path, label, caption = self.items[k]
        rel = os.path.relpath(path, self.root) if self.root.is_dir() else str(path)
        try:
            data = Path(path).read_bytes()
            if not data:
                raise ValueError("the file is empty (0 bytes)")
            if self.verify or self.max_side:
                decode_resized(data, 3, 32, name=rel)  # JPEGs decode at 1/8 scale here: cheap
            if self.max_side:
                data = _shrink(data, self.max_side)
        except Exception as e:
            (self.errors_dir / f"{uuid.uuid4().hex}.txt").write_text(f"{rel}: {e}")
            data, label, index = b"", -1, -1
        item = {"image": data, "label": int(label), "index": int(index), "path": rel}
        if self.captions:
            item["caption"] = caption or ""
        return item


def _shrink(data: bytes, max_side: int) -> bytes:
    """Re-encode an image whose longer side exceeds ``max_side`` at that size (aspect ratio kept), JPEG q=90."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if max(im.size) <= max_side:
            return data
        im.draft("RGB", (max_side, max_side))
        im = im.convert("RGB")
        s = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        return buf.getvalue()


def list_items(
    source: str,
    labelled: bool | None = None,
    image_column: str = "image",
    caption_column: str = "caption",
    label_column: str | None = "label",
) -> tuple[list[tuple[int, str, int, str | None]], list[str], bool, Path]:
    """The items of an image folder or an image-text table: ``[(index, path, label, caption)]``, the class
    names, whether there are captions, and the folder relative paths are taken from."""
    from lightning_ssl.data.image_text import read_image_text_table

    p = Path(source)
    if p.is_file():
        paths, fields = read_image_text_table(source, image_column, caption_column, label_column)
        names = [f.get("label") or "" for f in fields] if label_column else [""] * len(fields)
        if all(names):  # every row has a label
            classes = sorted(set(names), key=lambda s: (len(s), s) if s.isdigit() else (0, s))
            labels = [classes.index(n) for n in names]
        else:
            classes, labels = [], [-1] * len(fields)
        items: list[tuple[int, str, int, str | None]] = [
            (i, str(q), y, f["caption"]) for i, (q, y, f) in enumerate(zip(paths, labels, fields, strict=True))
        ]
        return items, classes, True, p.parent
    if labelled is None:  # class sub-folders holding images: labelled
        labelled = p.is_dir() and any(d.is_dir() for d in p.iterdir())
    files, file_labels, classes = list_image_folder(source, labelled=labelled)
    items = [(i, str(q), (file_labels[i] if file_labels is not None else -1), None) for i, q in enumerate(files)]
    return items, classes, False, p


def optimize_images(
    input: str,
    output: str,
    labelled: bool | None = None,
    chunk_bytes: str | int = "64MB",
    num_workers: int | None = None,
    max_side: int | None = None,
    seed: int = 0,
    verify: bool = True,
    overwrite: bool = False,
    image_column: str = "image",
    caption_column: str = "caption",
    label_column: str | None = "label",
    start_method: str | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Write an image folder or an image-text table into litdata chunks at ``output`` (see the module
    docstring). ``labelled``: None = class sub-folders if there are any. ``max_side``: re-encode larger images
    (default: keep the files' bytes). Returns the metadata written to ``output/lightning_ssl.json``."""
    litdata = _litdata()
    out = Path(output)
    if is_remote(output):
        raise ValueError(
            f"optimize writes to a local folder, not {output!r}: write locally, then copy the folder "
            "to the bucket (e.g. `aws s3 sync chunks/ s3://bucket/chunks/`)"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(
            f"{output!r} exists and is not empty; pass overwrite=True (--overwrite) to replace it "
            "(it is replaced only once the new chunks are complete)"
        )
    if max_side is not None and max_side < 32:
        raise ValueError(f"max_side must be >= 32, got {max_side}")
    items, classes, captions, root = list_items(input, labelled, image_column, caption_column, label_column)
    g = torch.Generator().manual_seed(seed)
    items = [items[i] for i in torch.randperm(len(items), generator=g).tolist()]  # chunks of mixed classes

    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    errors = work / "errors"
    errors.mkdir(parents=True)
    try:
        writer = _ItemWriter(items, root, captions, verify, max_side, errors)
        workers = max(1, min(num_workers or (os.cpu_count() or 1), len(items)))
        litdata.optimize(
            fn=writer,
            inputs=list(range(len(items))),
            output_dir=str(work / "chunks"),
            chunk_bytes=chunk_bytes,
            num_workers=workers,
            reorder_files=False,
            keep_data_ordered=True,
            start_method=start_method or ("fork" if sys.platform == "linux" else None),
            verbose=verbose,
        )
        bad = sorted(f.read_text() for f in errors.iterdir())
        if bad:
            shown = "\n  ".join(bad[:10]) + (f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else "")
            raise ValueError(
                f"{len(bad)} of {len(items)} images in {input!r} could not be read, so {output!r} was "
                f"not written (an existing one is left as it was); remove or fix them and run again:"
                f"\n  {shown}"
            )
        written = sum(c["chunk_size"] for c in json.loads((work / "chunks" / "index.json").read_text())["chunks"])
        if written != len(items):
            raise RuntimeError(f"litdata wrote {written} items for {len(items)} inputs; {output!r} left unchanged")
        meta = {
            "format": FORMAT,
            "source": str(Path(input).resolve()),
            "num_items": len(items),
            "classes": classes,
            "labelled": bool(classes),
            "captions": captions,
            "seed": seed,
            "max_side": max_side,
        }
        (work / "chunks" / META_FILE).write_text(json.dumps(meta, indent=1))
        old = None
        if out.exists():  # replace only now that the new chunks are complete
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
        (work / "chunks").rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return meta
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- reading --------------------------------------------------------------------------------------------------
def read_metadata(input_dir: str) -> dict[str, Any] | None:
    """``lightning_ssl.json`` of a local optimized dataset (None for remote ones or if absent)."""
    if is_remote(input_dir):
        return None
    f = Path(input_dir) / META_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def check_chunks(input_dir: str) -> dict[str, Any]:
    """For a local optimized dataset: ``index.json`` is there and every chunk it lists exists with its size
    (litdata would otherwise wait for a missing chunk and time out with a message about downloads). Returns
    the index."""
    d = Path(input_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"streaming dataset folder {input_dir!r} does not exist")
    index = d / "index.json"
    if not index.is_file():
        raise FileNotFoundError(
            f"{input_dir!r} is not an optimized dataset (no index.json); make one with "
            f"`lightning-ssl-data optimize --input <images> --output {input_dir}`"
        )
    try:
        chunks = json.loads(index.read_text())["chunks"]
    except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{str(index)!r} is not a litdata index: {e}") from e
    if not chunks or sum(c["chunk_size"] for c in chunks) == 0:
        raise ValueError(f"optimized dataset {input_dir!r} holds no items")
    for c in chunks:
        f = d / c["filename"]
        if not f.is_file():
            raise FileNotFoundError(
                f"chunk {c['filename']} of {input_dir!r} is missing ({len(chunks)} chunks are "
                "listed in index.json): copy the dataset again or rerun optimize"
            )
        if c.get("chunk_bytes") is not None and f.stat().st_size < c["chunk_bytes"]:
            raise ValueError(
                f"chunk {c['filename']} of {input_dir!r} is truncated ({f.stat().st_size} of "
                f"{c['chunk_bytes']} bytes): copy the dataset again or rerun optimize"
            )
    return json.loads(index.read_text())


class ItemDecoder:
    """Turns a stored item into what the dataloader yields, in the workers: for the batched device
    augmentation ``{"image": uint8 (C, S, S), "size", "label"}`` (or ``{"data": file bytes, ...}`` to decode on
    the device), else ``(transform(image), label)`` with the transform seeded by (seed, epoch, index); with
    captions the caption is added (``"caption"``, or the third element).

    Args:
        channels: Channels to decode to.
        decode_size: Side to resize to as uint8 for the batched device augmentation; None: apply ``transform``.
        transform: Per-image transform, seeded by (seed, epoch, index).
        decode: ``"workers"`` or ``"device"`` (yield the file bytes for nvJPEG).
        seed: Base seed of the augmentation.
        source: Name of the dataset, for error messages.
    """

    def __init__(
        self,
        channels: int,
        decode_size: int | None = None,
        transform=None,
        decode: str = "workers",
        seed: int = 0,
        source: str = "",
    ) -> None:
        self.channels, self.decode_size, self.transform, self.decode = channels, decode_size, transform, decode
        self.seed, self.source = seed, source

    def __call__(self, item: dict[str, Any], epoch: int = 0):
        data = bytes(item["image"])
        name = f"item {item.get('index')} ({item.get('path')}) of {self.source}"
        if not data:
            raise ValueError(f"{name} is empty: the dataset was written with errors")
        label, index = int(item.get("label", -1)), int(item.get("index", -1))
        if self.decode_size is not None:  # "index": the item's position in the source, e.g. to check sharding
            if self.decode == "device":
                out = {"data": torch.frombuffer(bytearray(data), dtype=torch.uint8), "label": label, "index": index}
            else:
                x, size = decode_resized(data, self.channels, self.decode_size, name=name)
                out = {"image": x, "label": label, "size": size, "index": index}
            if "caption" in item:
                out["caption"] = str(item["caption"])
            return out
        x = _decode_full(data, self.channels, name)
        x = apply_transform(self.transform, x, mix_seed(self.seed, epoch, int(item.get("index", 0))))
        return (x, label, str(item["caption"])) if "caption" in item else (x, label)


def _decode_full(data: bytes, channels: int, name: str) -> Tensor:
    """Decode at full size (the per-image path): torchvision's decoder, Pillow for the formats it lacks."""
    import io

    import numpy as np
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_image

    try:
        x = decode_image(
            torch.frombuffer(bytearray(data), dtype=torch.uint8),
            mode=ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY,
        )
    except RuntimeError:
        try:
            with Image.open(io.BytesIO(data)) as im:
                arr = torch.from_numpy(np.asarray(im.convert("RGB" if channels == 3 else "L")).copy())
        except Exception as e:
            raise ValueError(f"cannot decode {name} (corrupt or truncated?): {e}") from e
        x = arr.permute(2, 0, 1) if arr.ndim == 3 else arr.unsqueeze(0)
    return match_channels(x, channels)


def _stream_class():
    """``StreamingDataset`` whose items go through an ``ItemDecoder`` (knowing the epoch, for seeding) and whose
    chunk read errors name the dataset."""
    StreamingDataset: Any = _litdata().StreamingDataset  # a base class of no static type (litdata is untyped)
    from litdata.exceptions import ChunkWaitTimeoutError

    class ImageStream(StreamingDataset):
        def __init__(self, input_dir: str, decoder: ItemDecoder, **kwargs: Any) -> None:
            super().__init__(input_dir, **kwargs)
            self.decoder, self.source = decoder, input_dir

        def __getitem__(self, index):
            try:
                item = super().__getitem__(index)
            except ChunkWaitTimeoutError as e:
                raise FileNotFoundError(
                    f"a chunk of {self.source!r} could not be read ({e.args[0] if e.args else e}): "
                    "it is missing, or the object store is unreachable"
                ) from e
            return self.decoder(item, self.current_epoch)

    return ImageStream


def _loader_class():
    """litdata's ``StreamingDataLoader``, made to forget a restored position once that epoch has been iterated.
    litdata keeps it until the restored epoch is exhausted, but Lightning stops fetching when it has counted
    the epoch's batches (``len``), so every later epoch would replay the restored position again."""
    StreamingDataLoader: Any = _litdata().StreamingDataLoader  # likewise

    class ResumableStreamingDataLoader(StreamingDataLoader):
        _iterated_restore = False

        def __iter__(self):
            if self._iterated_restore:
                self.restore = False
            self._iterated_restore = self.restore
            yield from super().__iter__()

        def load_state_dict(self, obj):
            super().load_state_dict(obj)
            self._iterated_restore = False

    return ResumableStreamingDataLoader


class ChunkItems(Dataset):
    """The first ``limit`` items of an optimized dataset in stored order, map-style (for evaluation and the
    kNN bank: the items were shuffled when written, so the first ones are a random sample).

    Args:
        input_dir: The optimized dataset (a folder or an object-store URL).
        decoder: Turns a stored item into what the dataloader yields.
        limit: Items served (the first ones); None: all.
        **kwargs: Passed to litdata's ``StreamingDataset`` (``cache_dir``, ``storage_options``, ...).
    """

    def __init__(self, input_dir: str, decoder: ItemDecoder, limit: int | None = None, **kwargs: Any) -> None:
        self.stream = _stream_class()(input_dir, decoder, shuffle=False, drop_last=False, **kwargs)
        n = len(self.stream)
        self.n = n if limit is None else min(n, limit)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.stream[i]


class StreamingImageDataModule(FileDecoding, ImageDataModule):
    """Images (or image-text pairs) streamed from litdata chunks written by ``lightning-ssl-data optimize``,
    from a local folder or an object-store URL (``s3://``, ``gs://``, ``azure://``; chunks are cached in
    ``cache_dir``). Sampling is litdata's: chunks split over processes, nodes and workers, shuffled by
    (seed, epoch), resumable mid-epoch from a checkpoint.

    Args:
        input_dir: the optimized training set.
        val_dir: an optimized labelled evaluation set (e.g. ImageNet's validation folder), for the kNN monitor
            and the online probe; the kNN bank is the first ``val_bank_size`` training items.
        num_classes: default: from the dataset's ``lightning_ssl.json`` (local folders); give it for remote ones.
        decode_size: as ``ImageFolderDataModule``: with ``batch_augment: true`` workers decode and resize to
            this side, the views are made on the device.
        decode: ``"workers"`` or ``"device"``, as ``ImageFolderDataModule``.
        cache_dir: litdata's local cache of remote chunks.
        max_cache_size: litdata's cache limit, e.g. ``"50GB"``.
        storage_options: litdata's credentials / options for the object store.
        image_size: side of the training views and evaluation images in pixels.
        channels: channels the model sees.
        mean: per-channel normalization mean (ImageNet's by default).
        std: per-channel normalization std (ImageNet's by default).
        **kwargs: as for every ``ImageDataModule`` (``batch_size``, ``batch_augment``, ``val_bank_size``...).
    Image-text datasets (written from a CSV/JSONL) yield ``(image, label, caption)`` batches for CLIP.
    """

    native_channels = 3

    def __init__(
        self,
        input_dir: str,
        val_dir: str | None = None,
        image_size: int = 224,
        channels: int = 3,
        num_classes: int | None = None,
        decode_size: int | None = None,
        decode: str = "workers",
        cache_dir: str | None = None,
        max_cache_size: str = "50GB",
        storage_options: dict | None = None,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        **kwargs,
    ) -> None:
        super().__init__(image_size=image_size, channels=channels, mean=mean, std=std, **kwargs)
        self._init_decoding(decode_size, decode)
        self.input_dir, self.val_dir = input_dir, val_dir
        self.cache_dir, self.max_cache_size, self.storage_options = cache_dir, max_cache_size, storage_options or {}
        self.native_size = image_size
        meta = read_metadata(input_dir) or {}
        self.class_names: list[str] = list(meta.get("classes") or [])
        self.captions = bool(meta.get("captions"))
        self._num_classes = num_classes
        self.labelled = val_dir is not None
        self.zeroshot_templates = None

    @classmethod
    def describe(cls, init_args: dict) -> dict[str, int | None]:
        info = super().describe(init_args)
        if info["num_classes"] is None and init_args.get("input_dir"):
            meta = read_metadata(init_args["input_dir"]) or {}
            info["num_classes"] = len(meta.get("classes") or []) or None
        info["image_size"] = init_args.get("image_size") or 224
        return info

    @property
    def num_classes(self) -> int | None:  # type: ignore[override]  # a property over the class attribute
        return self._num_classes if self._num_classes is not None else (len(self.class_names) or None)

    def _stream_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"max_cache_size": self.max_cache_size}
        if self.cache_dir:
            kw["cache_dir"] = self.cache_dir
        if self.storage_options:
            kw["storage_options"] = self.storage_options
        return kw

    def prepare_data(self) -> None:
        for d in (self.input_dir, self.val_dir):
            if d is not None and not is_remote(d):
                check_chunks(d)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()  # cheap, and on every node (prepare_data runs on one process per node)
        if stage in ("fit", None):
            batched = self.batch_augment
            decoder = ItemDecoder(
                self.channels,
                self.decode_size if batched else None,
                None if batched else self.views.build(self.image_size, self.channels, *self.norm_stats()),
                self.decode,
                self.seed,
                self.input_dir,
            )
            self.train_set = _stream_class()(
                self.input_dir, decoder, shuffle=True, drop_last=True, seed=self.seed, **self._stream_kwargs()
            )
        if self.labelled and self.val_dir is not None:  # labelled: there is a val_dir
            eval_decoder = ItemDecoder(self.channels, None, self.eval_transform(), "workers", self.seed, "")
            self.val_set = ChunkItems(self.val_dir, _with_source(eval_decoder, self.val_dir), **self._stream_kwargs())
            self.bank_set = ChunkItems(
                self.input_dir, _with_source(eval_decoder, self.input_dir), None, **self._stream_kwargs()
            )
            bank = self.val_bank_size
            self.bank_subset = (
                self.bank_set
                if not bank or bank >= len(self.bank_set)
                else ChunkItems(
                    self.input_dir, _with_source(eval_decoder, self.input_dir), bank, **self._stream_kwargs()
                )
            )

    def eval_transform(self):
        if self.batch_augment:
            return self.uint8_eval_transform()
        from lightning_ssl.data.transforms import eval_transform

        return eval_transform(self.image_size, *self.norm_stats(), resize=True)

    def train_dataloader(self):
        loader = _loader_class()(
            self.train_set,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),  # pinning needs a GPU to copy to
            collate_fn=collate_images,
            drop_last=True,
        )
        if len(loader) == 0:
            raise ValueError(
                f"the training stream {self.input_dir!r} has {dataset_len(self.train_set)} items, fewer than one "
                f"batch ({self.batch_size}) per process and worker"
            )
        return loader

    def predict_dataloader(self) -> DataLoader:
        if not self.labelled:
            raise ValueError("StreamingImageDataModule predicts on val_dir: set it")
        return self._loader(self.val_set, False)

    def train_captions(self) -> list[str]:
        """Every training caption (for training a CLIP tokenizer), read from the chunks."""
        if not self.captions:
            raise ValueError(f"{self.input_dir!r} holds no captions (it was not written from an image-text table)")
        stream = _litdata().StreamingDataset(self.input_dir, **self._stream_kwargs())
        return [str(stream[i]["caption"]) for i in range(len(stream))]


def _with_source(decoder: ItemDecoder, source: str) -> ItemDecoder:
    return ItemDecoder(decoder.channels, decoder.decode_size, decoder.transform, decoder.decode, decoder.seed, source)
