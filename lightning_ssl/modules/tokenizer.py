"""Tokenizers for the language models, all of them Hugging Face ``tokenizers`` objects under one small wrapper.

``TextTokenizer.train(texts, kind)`` builds one on a corpus:

* ``byte``: the 256 byte values (GPT-2's byte alphabet, no merges): any string, no unknown tokens;
* ``char``: the ``vocab_size`` most frequent characters of the corpus (nanoGPT's shakespeare_char), others ``<unk>``;
* ``bpe``: byte-level BPE (GPT-2 style), trained to ``vocab_size`` tokens;
* ``wordpiece``: BERT's WordPiece with BERT's normalizer and pre-tokenizer (``lowercase`` as for bert-base-uncased).

Our own tokenizers have ``<pad>`` = 0, ``<unk>``, ``<eos>`` (ends every document) and ``<mask>`` (for BERT), and
optionally ``sentinels`` T5 sentinel tokens at the very top in T5's order: ``<extra_id_0>`` is the highest id,
``<extra_id_1>`` the next lower, and so on. ``TextTokenizer.load(path)`` reads any ``tokenizer.json`` (a file, or a
folder saved by ``transformers``' ``save_pretrained``, or ``packaged:all-MiniLM-L6-v2``) and finds the roles by the
usual names ([PAD]/<pad>, [SEP]/</s>/<|endoftext|>, [MASK]/<mask>, ...).

The tokenizer travels with the model: ``to_tensor``/``from_tensor`` store its JSON as a uint8 tensor, so it sits in
a checkpoint's ``state_dict`` and loads with ``weights_only=True``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

KINDS = ("byte", "char", "bpe", "wordpiece")
PAD, UNK, EOS, MASK = "<pad>", "<unk>", "<eos>", "<mask>"
SPECIALS = [PAD, UNK, EOS, MASK]
ROLES = {  # role: names tried in order, in a tokenizer of ours or one from elsewhere
    "pad": (PAD, "[PAD]", "<|pad|>"),
    "unk": (UNK, "[UNK]", "<|unk|>"),
    "eos": (EOS, "</s>", "[SEP]", "<|endoftext|>", "<|end_of_text|>", "<|eot_id|>"),
    "mask": (MASK, "[MASK]"),
    "bos": ("<s>", "[CLS]", "<|begin_of_text|>", "<bos>"),
}


def sentinel(i: int) -> str:
    return f"<extra_id_{i}>"


def train_tokenizer(
    texts: Iterable[str],
    kind: str = "bpe",
    vocab_size: int = 4096,
    min_frequency: int = 2,
    lowercase: bool = False,
    special_tokens: list[str] | None = None,
):
    """A Hugging Face ``tokenizers.Tokenizer`` of ``kind`` trained on ``texts`` with at most ``vocab_size`` tokens,
    ``special_tokens`` first (ids 0, 1, ...)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if kind not in KINDS:
        raise ValueError(f"tokenizer kind must be one of {KINDS} or a path to a tokenizer.json, got {kind!r}")
    special_tokens = list(SPECIALS if special_tokens is None else special_tokens)
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("cannot train a tokenizer on no text")
    norms: list[normalizers.Normalizer] = [normalizers.NFC()] + ([normalizers.Lowercase()] if lowercase else [])
    if kind == "byte":
        alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
        vocab = {t: i for i, t in enumerate(special_tokens + alphabet)}
        tok = Tokenizer(models.BPE(vocab, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
    elif kind == "char":
        counts = Counter(c for t in texts for c in (t.lower() if lowercase else t))
        keep = [c for c, _ in counts.most_common(max(0, vocab_size - len(special_tokens)))]
        vocab = {t: i for i, t in enumerate(special_tokens + sorted(keep))}
        tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK if UNK in special_tokens else None))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")  # every character, newlines too
        tok.decoder = decoders.Fuse()
    elif kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer: trainers.Trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            show_progress=False,
            special_tokens=special_tokens,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )  # no unknown bytes
    else:
        tok = Tokenizer(models.WordPiece(unk_token=UNK if UNK in special_tokens else special_tokens[0]))
        norms = [normalizers.BertNormalizer(lowercase=lowercase)]
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False, special_tokens=special_tokens
        )
    tok.normalizer = normalizers.Sequence(norms)
    if kind in ("bpe", "wordpiece"):
        tok.train_from_iterator(texts, trainer)
    else:
        tok.add_special_tokens(special_tokens)  # already in the vocabulary: marks them special
    return tok


class TokenizerFile:
    """Writing a wrapped Hugging Face ``tokenizers.Tokenizer`` (``self.tokenizer``) as its ``tokenizer.json`` text."""

    tokenizer: Any

    def to_str(self) -> str:
        """The tokenizer as JSON text (what ``tokenizers.Tokenizer.from_str`` reads back)."""
        return self.tokenizer.to_str()

    def save(self, path: str | Path) -> Path:
        """Write the JSON to ``path`` (parent folders created); returns the path."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(self.to_str(), encoding="utf-8")
        return p


class TextTokenizer(TokenizerFile):
    """A ``tokenizers.Tokenizer`` plus the token roles the models need (``pad_id``, ``eos_id``, ``mask_id``,
    ``unk_id``, ``bos_id``; None where the tokenizer has no such token), ``special_ids`` and ``sentinel_ids``.

    Args:
        tokenizer: A ``tokenizers.Tokenizer`` (``TextTokenizer.train`` or ``load`` make one).
        source: Where it came from, for messages and ``repr`` (a path, "checkpoint", "bpe trained on the corpus").
    """

    # the token roles, set from ROLES by __init__; None where the tokenizer has no such token
    pad_id: int | None
    unk_id: int | None
    eos_id: int | None
    mask_id: int | None
    bos_id: int | None

    def __init__(self, tokenizer, source: str = "") -> None:
        self.tokenizer, self.source = tokenizer, source
        tokenizer.no_padding(), tokenizer.no_truncation()  # packing decides lengths (a saved BERT one pads to 128)
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        for role, names in ROLES.items():
            setattr(self, f"{role}_id", next((vocab[n] for n in names if n in vocab), None))
        self.special_ids = sorted(i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special)
        self.sentinel_ids: list[int] = []
        while sentinel(len(self.sentinel_ids)) in vocab:
            self.sentinel_ids.append(vocab[sentinel(len(self.sentinel_ids))])

    # -- building, saving, loading -------------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        kind: str = "bpe",
        vocab_size: int = 4096,
        min_frequency: int = 2,
        lowercase: bool = False,
        sentinels: int = 0,
    ) -> TextTokenizer:
        """Train on ``texts``: at most ``vocab_size`` tokens in all, the top ``sentinels`` of them T5 sentinels."""
        if sentinels < 0 or vocab_size <= len(SPECIALS) + sentinels:
            raise ValueError(
                f"vocab_size={vocab_size} leaves no room for the {len(SPECIALS)} special tokens and "
                f"{sentinels} sentinels"
            )
        tok = train_tokenizer(texts, kind, vocab_size - sentinels, min_frequency, lowercase)
        tok.add_special_tokens([sentinel(i) for i in reversed(range(sentinels))])  # <extra_id_0> gets the top id
        return cls(tok, source=f"{kind} trained on the corpus")

    @classmethod
    def load(cls, path: str) -> TextTokenizer:
        """A ``tokenizer.json`` file, a folder holding one (``save_pretrained``), or ``packaged:<name>``."""
        from tokenizers import Tokenizer

        from lightning_ssl.modules.backbones import resolve_weights

        p = Path(resolve_weights(path))
        file = p / "tokenizer.json" if p.is_dir() else p
        if not file.is_file():
            raise FileNotFoundError(
                f"no tokenizer at {path!r}: expected a tokenizer.json file or a folder with one "
                f"(or one of the kinds {KINDS})"
            )
        try:
            return cls(Tokenizer.from_file(str(file)), source=str(path))
        except Exception as e:  # tokenizers raises its own Exception type for malformed JSON
            raise ValueError(f"{str(file)!r} is not a readable tokenizer.json: {e}") from e

    @classmethod
    def from_str(cls, s: str, source: str = "") -> TextTokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(s), source=source)

    def to_tensor(self) -> Tensor:
        """The JSON as a uint8 tensor (for a ``state_dict``)."""
        return torch.frombuffer(bytearray(self.to_str().encode("utf-8")), dtype=torch.uint8)

    @classmethod
    def from_tensor(cls, t: Tensor) -> TextTokenizer:
        return cls.from_str(bytes(t.cpu().tolist()).decode("utf-8"), source="checkpoint")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TextTokenizer):
            return NotImplemented
        return self.tokenizer.get_vocab(with_added_tokens=True) == other.tokenizer.get_vocab(with_added_tokens=True)

    def __repr__(self) -> str:
        return f"TextTokenizer({self.vocab_size} tokens, {self.source or 'built in code'})"

    # -- using it --------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def mask_token(self) -> str | None:
        return None if self.mask_id is None else self.tokenizer.id_to_token(self.mask_id)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.tokenizer.id_to_token(int(i))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, no special tokens added."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_documents(self, texts: list[str]) -> list[list[int]]:
        """Each document as the unit of packing: with the tokenizer's own special tokens (BERT's [CLS] .. [SEP],
        T5's </s>), and ``eos`` appended when the tokenizer does not end documents itself."""
        out = []
        for enc in self.tokenizer.encode_batch(list(texts), add_special_tokens=True):
            ids = enc.ids
            if self.eos_id is not None and (not ids or ids[-1] != self.eos_id):
                ids = [*ids, self.eos_id]
            out.append(ids)
        return out

    def decode(self, ids: Tensor | Iterable[int], skip_special_tokens: bool = True) -> str:
        ids = ids.tolist() if isinstance(ids, Tensor) else [int(i) for i in ids]
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
