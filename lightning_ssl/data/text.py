"""Labelled text for evaluating text encoders (kNN, linear probe, few-shot, fine-tuning).

``TextClassificationDataModule`` reads a CSV (columns ``text``, ``label``) or JSONL file, or the ``fortunes``
corpus that Debian ships (``apt-get install fortunes``: ~15k quotations filed under topics such as computers,
food, law, love, politics, science; the topic is the label). Batches are ``(list of strings, labels)``; text
encoders tokenize themselves (``HFTextEncoder``).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_ssl.data.tables import read_rows

FORTUNES_DIR = "/usr/share/games/fortunes"
FORTUNE_TOPICS = (
    "computers",
    "education",
    "food",
    "law",
    "literature",
    "love",
    "politics",
    "science",
    "sports",
    "startrek",
)


class TextDataset(Dataset):
    """Texts with integer labels, for text classification.

    Args:
        texts: The documents.
        labels: One integer label per document.
    """

    def __init__(self, texts: list[str], labels: list[int]) -> None:
        if not texts:
            raise ValueError("text dataset is empty")
        self.texts, self.labels = texts, labels

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.texts[i], self.labels[i]


def _collate(batch: list[tuple[str, int]]) -> tuple[list[str], torch.Tensor]:
    texts, labels = zip(*batch, strict=True)
    return list(texts), torch.tensor(labels)


def read_fortunes(
    directory: str = FORTUNES_DIR, topics: tuple[str, ...] = FORTUNE_TOPICS
) -> tuple[list[str], list[int], list[str]]:
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"fortunes not found in {directory!r}: install the Debian package `fortunes`")
    texts, labels = [], []
    for i, topic in enumerate(topics):
        f = root / topic
        if not f.exists():
            raise FileNotFoundError(f"no fortunes topic {topic!r} in {directory!r}")
        for entry in f.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            entry = " ".join(entry.replace("%", "").split())
            if len(entry) > 10:
                texts.append(entry)
                labels.append(i)
    return texts, labels, list(topics)


def read_table(path: str) -> tuple[list[str], list[int], list[str]]:
    """``text``/``label`` columns of a CSV, or ``{"text": ..., "label": ...}`` lines of a JSONL file. Labels
    may be strings (mapped to indices in sorted order) or integers."""
    rows = read_rows(path, "text file")
    if "text" not in rows[0] or "label" not in rows[0]:
        raise ValueError(f"{path!r} needs 'text' and 'label' fields (found {list(rows[0])})")
    names = sorted({str(r["label"]) for r in rows}, key=lambda s: (len(s), s) if s.isdigit() else (0, s))
    index = {n: i for i, n in enumerate(names)}
    return [str(r["text"]) for r in rows], [index[str(r["label"])] for r in rows], names


class TextClassificationDataModule(L.LightningDataModule):
    """Text classification data: ``source="fortunes"`` (with ``topics``) or a CSV/JSONL path; a stratified,
    seeded ``test_fraction`` is held out for evaluation.

    Args:
        source: ``"fortunes"`` (the Debian ``fortunes`` quotations, labelled by file) or a CSV / JSONL path with
            ``text`` and ``label`` columns.
        topics: fortunes: the files (topics) used as classes; None: all.
        batch_size: Texts per batch per process.
        test_fraction: Fraction held out for evaluation (stratified, seeded), in (0, 1).
        seed: Seed of the split and the sampling order.
        num_workers: Dataloader workers.
    """

    def __init__(
        self,
        source: str = "fortunes",
        topics: list[str] | None = None,
        batch_size: int = 64,
        test_fraction: float = 0.2,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
        self.source, self.topics = source, tuple(topics or FORTUNE_TOPICS)
        self.batch_size, self.test_fraction, self.seed, self.num_workers = batch_size, test_fraction, seed, num_workers
        self.val_bank_size = None
        self.class_names: list[str] = []

    @classmethod
    def describe(cls, init_args: dict) -> dict:
        topics = init_args.get("topics") or FORTUNE_TOPICS
        return {
            "image_size": None,
            "channels": None,
            "num_classes": len(topics) if init_args.get("source", "fortunes") == "fortunes" else None,
        }

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) or (len(self.topics) if self.source == "fortunes" else None)

    def prepare_data(self) -> None:
        if self.source == "fortunes":
            read_fortunes(topics=self.topics)
        elif not Path(self.source).is_file():
            raise FileNotFoundError(f"text file {self.source!r} does not exist")

    def setup(self, stage: str | None = None) -> None:
        texts, labels, self.class_names = (
            read_fortunes(topics=self.topics) if self.source == "fortunes" else read_table(self.source)
        )
        g = torch.Generator().manual_seed(self.seed)
        y = torch.tensor(labels)
        test = torch.zeros(len(y), dtype=torch.bool)
        for c in y.unique():
            idx = (y == c).nonzero().flatten()
            idx = idx[torch.randperm(len(idx), generator=g)]
            test[idx[: max(1, round(self.test_fraction * len(idx)))]] = True
        pick = lambda mask: TextDataset([texts[i] for i in mask.nonzero().flatten()], y[mask].tolist())  # noqa: E731
        self.train_set, self.val_set = pick(~test), pick(test)

    def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            ds, batch_size=self.batch_size, shuffle=shuffle, collate_fn=_collate, num_workers=self.num_workers
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.val_set, False), self._loader(self.train_set, False)]

    def test_dataloader(self) -> list[DataLoader]:
        return self.val_dataloader()
