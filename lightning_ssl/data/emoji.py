"""Real colour images with names, available offline: the Unicode emoji, rendered from Noto Color Emoji.

Sources (Debian packages): ``unicode-data`` (``/usr/share/unicode/emoji/emoji-test.txt``: every emoji with its
official name, group and subgroup) and ``fonts-noto-color-emoji`` (a bitmap font; Pillow renders it at size
109 with ``embedded_color=True``). Images are rendered once, composited on white, resized, and cached under
``root/emoji`` as a uint8 tensor. Skin-tone and hair variants are left out by default: they are near copies
of the base emoji and would put the same picture on both sides of a train/test split.

``EmojiDataModule`` serves them as a labelled image dataset (label: the 9 groups or ~100 subgroups), e.g. for
colorization; ``load_emoji`` gives images with their names for image-text models (CLIP).
"""

from __future__ import annotations

from pathlib import Path

import torch

from lightning_ssl.data.datamodules import ImageDataModule

EMOJI_TEST = "/usr/share/unicode/emoji/emoji-test.txt"
EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
_MODIFIERS = ("skin tone", "red hair", "curly hair", "white hair", "bald")


def read_emoji_list(path: str = EMOJI_TEST, variants: bool = False) -> list[dict[str, str]]:
    """Fully-qualified emoji of ``emoji-test.txt``: ``{"char", "name", "group", "subgroup"}`` in file order."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{path!r} not found: install the Debian package unicode-data")
    out, group, subgroup = [], "", ""
    for line in p.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif "; fully-qualified" in line and "#" in line:
            codes = line.split(";")[0].split()
            comment = line.split("#", 1)[1].strip().split(" ", 2)  # char, version (E1.0), name
            name = comment[2] if len(comment) == 3 else comment[-1]
            if not variants and any(m in name for m in _MODIFIERS) and group != "Component":
                continue
            if group == "Component":  # bare skin-tone / hair swatches
                continue
            out.append(
                {"char": "".join(chr(int(c, 16)) for c in codes), "name": name, "group": group, "subgroup": subgroup}
            )
    if not out:
        raise ValueError(f"no fully-qualified emoji found in {path!r}")
    return out


def render_emoji(char: str, size: int = 64, font_path: str = EMOJI_FONT) -> torch.Tensor | None:
    """One emoji as uint8 (3, size, size) on white, or None if the font has no glyph for it."""
    from PIL import Image, ImageDraw

    font = _font(font_path)
    canvas = Image.new("RGBA", (160, 160), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((8, 8), char, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None:
        return None
    glyph = canvas.crop(box)
    side = max(glyph.size)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 0))
    square.paste(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    white = Image.new("RGBA", square.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, square).convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    t = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1).contiguous()
    return None if (t > 250).all() else t


_FONTS: dict[str, object] = {}


def _font(path: str):
    from PIL import ImageFont

    if path not in _FONTS:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path!r} not found: install the Debian package fonts-noto-color-emoji")
        _FONTS[path] = ImageFont.truetype(path, 109)  # the only size this bitmap font has
    return _FONTS[path]


def load_emoji(
    root: str = "data",
    size: int = 64,
    variants: bool = False,
    emoji_test: str = EMOJI_TEST,
    font_path: str = EMOJI_FONT,
) -> dict:
    """All renderable emoji at ``size`` px: ``{"images": uint8 (N, 3, size, size), "names", "groups",
    "subgroups", "chars"}``, rendered once and cached in ``root/emoji``."""
    cache = Path(root) / "emoji" / f"emoji_{size}{'_variants' if variants else ''}.pt"
    if cache.exists():
        return torch.load(cache, weights_only=True)
    items, images = [], []
    for e in read_emoji_list(emoji_test, variants):
        img = render_emoji(e["char"], size, font_path)
        if img is not None:
            items.append(e)
            images.append(img)
    data = {
        "images": torch.stack(images),
        "names": [e["name"] for e in items],
        "groups": [e["group"] for e in items],
        "subgroups": [e["subgroup"] for e in items],
        "chars": [e["char"] for e in items],
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp")
    torch.save(data, tmp)
    tmp.replace(cache)
    return data


def stratified_split(labels: torch.Tensor, test_fraction: float, seed: int) -> torch.Tensor:
    """Boolean mask of a test split holding ``test_fraction`` of every class (at least one item if it has two)."""
    g = torch.Generator().manual_seed(seed)
    test = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n = round(test_fraction * len(idx)) if len(idx) > 1 else 0
        test[idx[: max(n, 1 if len(idx) > 1 else 0)]] = True
    return test


class EmojiDataModule(ImageDataModule):
    """The emoji as a labelled colour-image dataset: ``label="group"`` (9 classes) or ``"subgroup"`` (~100);
    a seeded stratified ``test_fraction`` is held out.

    Args:
        label: ``"group"`` (9 classes) or ``"subgroup"`` (~100).
        test_fraction: Fraction held out for evaluation (stratified, seeded), in (0, 1).
        variants: Include the skin-tone and hair variants (near copies of their base emoji).
        **kwargs: As for every ``ImageDataModule`` (``batch_size``, ``views``, ``batch_augment``, ...).
    """

    native_size, native_channels = 64, 3
    mean, std = (0.798, 0.738, 0.669), (0.304, 0.299, 0.364)  # measured over the 64 px renders (white background)

    def __init__(self, label: str = "group", test_fraction: float = 0.2, variants: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        if label not in ("group", "subgroup"):
            raise ValueError(f"label must be 'group' or 'subgroup', got {label!r}")
        self.label, self.test_fraction, self.variants = label, test_fraction, variants
        self.class_names: list[str] = []

    @classmethod
    def describe(cls, init_args: dict) -> dict:
        info = super().describe(init_args)
        info["num_classes"] = 9 if init_args.get("label", "group") == "group" else None
        return info

    @property
    def num_classes(self) -> int | None:  # type: ignore[override]  # a property over the class attribute
        return len(self.class_names) or (9 if self.label == "group" else None)

    def prepare_data(self) -> None:
        load_emoji(str(self.root), self.native_size, self.variants)

    def load_split(self, split):
        data = load_emoji(str(self.root), self.native_size, self.variants)
        names = data["groups"] if self.label == "group" else data["subgroups"]
        self.class_names = sorted(set(names))
        labels = torch.tensor([self.class_names.index(n) for n in names])
        test = stratified_split(labels, self.test_fraction, self.seed)
        mask = test if split == "test" else ~test
        return data["images"][mask], labels[mask]
