"""Image-text pairs for CLIP: a CSV/JSONL table of (image path, caption[, label]), or the Unicode emoji.

Batches are ``(images (B, C, H, W), labels (B,), captions list[str])``: images and labels first, as in every
other datamodule of the library, so the online linear probe and the kNN monitor (which read ``batch[1]`` and
``(x, y)``) work unchanged; labels are -1 where there are none.

Captions are expanded with templates (``caption_templates``, Python format strings over the item's fields:
``{caption}``/``{name}``, ``{label}``, and for emoji ``{group}``/``{subgroup}``, for a table any other column).
Training draws one template per item and epoch (seeded); evaluation uses ``eval_template``. Zero-shot
classification uses ``class_names`` with ``zeroshot_templates``.

``source="emoji"``: ~1,860 emoji rendered from Noto Color Emoji (``data.emoji.load_emoji``), caption = the
official name ("dog face"), label = one of 9 groups or ~100 subgroups; a seeded stratified ``test_fraction`` is
held out (images the model never sees, for zero-shot and retrieval).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_ssl.data.datamodules import ImageDataModule
from lightning_ssl.data.datasets import apply_transform, check_image_file, match_channels, read_image
from lightning_ssl.data.emoji import EmojiDataModule, load_emoji, stratified_split
from lightning_ssl.data.tables import read_rows
from lightning_ssl.data.transforms import ViewPreset, eval_transform

EMOJI_CAPTION_TEMPLATES = (
    "{name}",
    "an emoji of {name}",
    "a {name} emoji",
    "{name}, a {group} emoji",
    "a {subgroup} emoji: {name}",
)
EMOJI_ZEROSHOT_TEMPLATES = ("a {} emoji", "an emoji of {}", "{}")
PHOTO_ZEROSHOT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "{}")


class ImageTextDataset(Dataset):
    """Items ``(image, label, caption)``. ``images``: uint8 (N, C, H, W) or image file paths; ``fields``: per item
    the values the ``templates`` are formatted with. Indexed by ``i`` or ``(i, seed)`` (``SeededSampler``): the
    seed picks the template and drives the image transform, so an epoch is reproducible.

    Args:
        images: uint8 images (N, C, H, W) or image file paths.
        fields: Per item, the values the templates are formatted with (``{"caption": ..., "group": ...}``).
        labels: Integer label per item (-1: none).
        templates: Caption templates; one is drawn per item and epoch.
        transform: Per-image transform, called with a seeded generator; None: the image as a float tensor.
        channels: Channels to decode file images to.
    """

    def __init__(
        self,
        images: Tensor | list[Path],
        fields: list[dict[str, str]],
        labels: list[int],
        templates: list[str] | tuple[str, ...],
        transform=None,
        channels: int = 3,
    ) -> None:
        if len(images) == 0:
            raise ValueError("image-text dataset is empty")
        if not (len(images) == len(fields) == len(labels)):
            raise ValueError(f"{len(images)} images, {len(fields)} captions and {len(labels)} labels")
        if not templates:
            raise ValueError("at least one caption template is needed")
        self.images, self.fields, self.labels, self.templates = images, fields, list(labels), list(templates)
        self.transform, self.channels = transform, channels

    def __len__(self) -> int:
        return len(self.fields)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int, str]:
        i, seed = key if isinstance(key, tuple) else (key, None)
        img = self.images[i] if isinstance(self.images, Tensor) else read_image(self.images[i], self.channels)
        x = apply_transform(self.transform, match_channels(img, self.channels), seed)
        k = seed % len(self.templates) if seed is not None else int(torch.randint(len(self.templates), ()))
        return x, self.labels[i], format_caption(self.templates[k], self.fields[i])


def format_caption(template: str, fields: dict[str, str]) -> str:
    try:
        return template.format_map(fields)
    except KeyError as e:
        raise KeyError(f"caption template {template!r} uses {e}, but the items only have {sorted(fields)}") from None


def read_image_text_table(
    path: str, image_column: str = "image", caption_column: str = "caption", label_column: str | None = "label"
) -> tuple[list[Path], list[dict[str, str]]]:
    """Rows of a CSV (header row) or JSONL file: image paths (relative ones are read from the table's folder)
    and each row's fields (every column, ``caption``/``name`` = the caption, ``label`` if present)."""
    p = Path(path)
    rows = read_rows(path, "image-text table")
    for col in (image_column, caption_column):
        if col not in rows[0]:
            raise ValueError(f"{path!r} needs a {col!r} column (found {list(rows[0])})")
    paths, fields = [], []
    for n, r in enumerate(rows, start=2 if p.suffix != ".jsonl" else 1):
        caption = str(r.get(caption_column) or "").strip()
        if not caption:
            raise ValueError(f"{path!r} line {n}: empty caption")
        img = Path(str(r[image_column]))
        img = img if img.is_absolute() else p.parent / img
        if not img.is_file():
            raise FileNotFoundError(f"{path!r} line {n}: image file {str(img)!r} does not exist")
        check_image_file(img)
        f = {k: str(v) for k, v in r.items() if v is not None}
        f.update(caption=caption, name=caption)
        if label_column and label_column in r:
            f["label"] = str(r[label_column])
        paths.append(img)
        fields.append(f)
    return paths, fields


class ImageTextDataModule(ImageDataModule):
    """Image-text pairs from ``source``: ``"emoji"`` or a CSV/JSONL path (see the module docstring).

    Args:
        label: emoji: ``"group"`` (9 classes, default) or ``"subgroup"`` (~100); a table: the label column
            (default ``"label"`` if present; rows without labels give unlabelled data: no zero-shot, kNN, probe).
        caption_templates: training captions (one drawn per item and epoch); default for emoji: the name and
            a few phrasings with its group/subgroup; for a table: ``["{caption}"]``.
        eval_template: the caption of each validation image (retrieval pairs).
        zeroshot_templates: prompts for class names (``{}`` = the class name), ensembled for zero-shot.
        views: training augmentation (the first view of the preset); default: a random resized crop with scale
            >= 0.6, no flips or colour changes (captions such as "left arrow" or "red heart" depend on them).
        test_fraction: held-out fraction (stratified by label), used for validation and test.
        source: ``"emoji"`` or a CSV / JSONL file of image paths (relative to the file) and captions.
        variants: emoji: include the skin-tone and hair variants.
        image_column: a table's column holding the image path.
        caption_column: a table's column holding the caption.
        **kwargs: as for every ``ImageDataModule`` (``batch_size``, ``batch_augment``, ...).
    """

    eval_resizes_files = True  # files of any size: resized, then center-cropped

    native_size, native_channels = 64, 3

    def __init__(
        self,
        source: str = "emoji",
        label: str | None = None,
        caption_templates: list[str] | None = None,
        eval_template: str = "{caption}",
        zeroshot_templates: list[str] | None = None,
        test_fraction: float = 0.2,
        variants: bool = False,
        image_column: str = "image",
        caption_column: str = "caption",
        **kwargs,
    ) -> None:
        if kwargs.get("batch_augment"):
            raise ValueError("ImageTextDataModule augments per sample (batch_augment is not supported)")
        if kwargs.get("views") is None:
            kwargs["views"] = ViewPreset(
                [dict(min_scale=0.6, flip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)]
            )
        emoji = source == "emoji"
        if emoji and kwargs.get("mean") is None:
            kwargs["mean"], kwargs["std"] = EmojiDataModule.mean, EmojiDataModule.std
        super().__init__(**kwargs)
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
        if emoji and label not in (None, "group", "subgroup"):
            raise ValueError(f"emoji labels are 'group' or 'subgroup', got {label!r}")
        self.source, self.label = source, label or ("group" if emoji else "label")
        self.caption_templates = list(caption_templates or (EMOJI_CAPTION_TEMPLATES if emoji else ["{caption}"]))
        self.eval_template = eval_template
        self.zeroshot_templates = list(
            zeroshot_templates or (EMOJI_ZEROSHOT_TEMPLATES if emoji else PHOTO_ZEROSHOT_TEMPLATES)
        )
        self.test_fraction, self.variants = test_fraction, variants
        self.image_column, self.caption_column = image_column, caption_column
        self.class_names: list[str] = []
        self._data: tuple | None = None

    @classmethod
    def describe(cls, init_args: dict) -> dict:
        info = super().describe(init_args)
        emoji = init_args.get("source", "emoji") == "emoji"
        info["num_classes"] = 9 if emoji and init_args.get("label") in (None, "group") else None
        return info

    @property
    def num_classes(self) -> int | None:  # type: ignore[override]  # a property over the class attribute
        return len(self.class_names) or (9 if self.source == "emoji" and self.label == "group" else None)

    def prepare_data(self) -> None:
        if self.source == "emoji":
            load_emoji(str(self.root), self.native_size, self.variants)
        else:
            read_image_text_table(self.source, self.image_column, self.caption_column, self.label)

    def _load(self) -> tuple:
        """(images or paths, fields, labels (N,), test mask (N,)), read once."""
        if self._data is not None:
            return self._data
        if self.source == "emoji":
            data = load_emoji(str(self.root), self.native_size, self.variants)
            images = data["images"]
            readable = lambda s: s.replace("-", " ")  # noqa: E731  subgroups are "animal-mammal"
            fields = [
                {
                    "caption": n,
                    "name": n,
                    "group": g,
                    "subgroup": readable(s),
                    "label": g if self.label == "group" else readable(s),
                }
                for n, g, s in zip(data["names"], data["groups"], data["subgroups"], strict=True)
            ]
        else:
            images, fields = read_image_text_table(self.source, self.image_column, self.caption_column, self.label)
        names: list[str] = [f.get("label") or "" for f in fields]
        labelled = all(names)  # every row has a label
        # integer labels sort as numbers ("2" before "10"), names alphabetically
        self.class_names = sorted(set(names), key=lambda s: (len(s), s) if s.isdigit() else (0, s)) if labelled else []
        labels = (
            torch.tensor([self.class_names.index(n) for n in names]) if labelled else torch.full((len(fields),), -1)
        )
        if labelled:
            test = stratified_split(labels, self.test_fraction, self.seed)
        else:  # no classes to stratify by: a seeded random split; no labelled bank for the kNN monitor
            g = torch.Generator().manual_seed(self.seed)
            test = torch.zeros(len(fields), dtype=torch.bool)
            test[torch.randperm(len(fields), generator=g)[: max(1, round(self.test_fraction * len(fields)))]] = True
            self.val_bank_size = 0
        if test.all() or not test.any():
            raise ValueError(
                f"{len(fields)} image-text pairs are too few to hold out a test_fraction of {self.test_fraction}"
            )
        self._data = (images, fields, labels, test)
        return self._data

    def make_dataset(self, split: str, transform) -> ImageTextDataset:
        images, fields, labels, test = self._load()
        idx = (test if split == "test" else ~test).nonzero().flatten().tolist()
        picked = images[idx] if isinstance(images, Tensor) else [images[i] for i in idx]
        templates = self.caption_templates if split == "train" else [self.eval_template]
        return ImageTextDataset(
            picked, [fields[i] for i in idx], labels[idx].tolist(), templates, transform, self.channels
        )

    def train_transform(self):
        return self.views.build(self.image_size, self.channels, *self.norm_stats()).transforms[0]  # one view

    def eval_transform(self):
        return eval_transform(self.image_size, *self.norm_stats(), resize=True)  # files come in any size

    def train_captions(self) -> list[str]:
        """Every training caption under every template: the text a tokenizer is trained on."""
        _, fields, _, test = self._load()
        return [
            format_caption(t, fields[i]) for i in (~test).nonzero().flatten().tolist() for t in self.caption_templates
        ]
