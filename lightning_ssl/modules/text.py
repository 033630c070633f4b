"""A small text tower of our own for CLIP: a byte-level BPE tokenizer trained on the captions (Hugging Face
``tokenizers``) and a transformer encoder (Radford et al., 2021, sec. 2.4: causal masking, the final state of
the end-of-text token as the text feature; or bidirectional with mean pooling).

The tokenizer is part of the model's state: ``TextTransformer`` stores its JSON in the ``state_dict`` (as a
uint8 tensor, so checkpoints still load with ``weights_only=True``), and ``CLIP`` trains it on the
datamodule's captions when a fit starts without one. Byte-level BPE has no unknown tokens: any string
round-trips (up to lowercasing).
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lightning_ssl.modules.spec import Buildable
from lightning_ssl.modules.tokenizer import TokenizerFile

PAD, SOT, EOT = "<pad>", "<sot>", "<eot>"


if TYPE_CHECKING:  # for the type checker any module is a text encoder; what follows is the CLI's view of the type
    TextEncoder = nn.Module
else:

    class TextEncoder(nn.Module, metaclass=ABCMeta):
        """What CLIP's ``text_encoder`` argument takes: a module mapping a list of B strings to features (B, D).

        The project's text towers derive from it, so ``--model.help CLIP`` lists them (and not every ``nn.Module``
        in torch); any other ``nn.Module`` is accepted too (``issubclass`` says so), by ``class_path``.
        """

        @abstractmethod
        def forward(self, texts: list[str]) -> Tensor:
            """B strings -> features (B, D)."""

        @classmethod
        def __subclasshook__(cls, other: type) -> Any:
            if cls is TextEncoder:
                return issubclass(other, nn.Module) or NotImplemented
            return NotImplemented


class BPETokenizer(TokenizerFile):
    """Byte-level BPE (GPT-2 style) with ``<pad>`` = 0, ``<sot>`` and ``<eot>`` special tokens.

    ``encode`` gives (B, context_length) ids ``<sot> text <eot> <pad>...``; text too long is truncated but
    keeps its ``<eot>`` (the token a causal text tower reads the feature from).

    Args:
        tokenizer: A ``tokenizers.Tokenizer`` with ``<pad>`` = 0, ``<sot>`` and ``<eot>`` (``BPETokenizer.train``
            or ``load`` make one).
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.pad_id, self.sot_id, self.eot_id = (tokenizer.token_to_id(t) for t in (PAD, SOT, EOT))
        if self.pad_id != 0 or self.sot_id is None or self.eot_id is None:
            raise ValueError("not a BPETokenizer: <pad> must be id 0 and <sot>/<eot> must exist")

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2, lowercase: bool = True
    ) -> BPETokenizer:
        from lightning_ssl.modules.tokenizer import train_tokenizer

        return cls(train_tokenizer(texts, "bpe", vocab_size, min_frequency, lowercase, special_tokens=[PAD, SOT, EOT]))

    @classmethod
    def from_str(cls, s: str) -> BPETokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(s))

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"tokenizer file {str(p)!r} does not exist")
        return cls.from_str(p.read_text(encoding="utf-8"))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, texts: list[str], context_length: int) -> Tensor:
        """(B, context_length) int64 ids."""
        if context_length < 3:
            raise ValueError(f"context_length must be >= 3, got {context_length}")
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for i, enc in enumerate(self.tokenizer.encode_batch([str(t) for t in texts], add_special_tokens=False)):
            ids = [self.sot_id, *enc.ids[: context_length - 2], self.eot_id]
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def decode(self, ids: Tensor | list[int]) -> str:
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return self.tokenizer.decode([i for i in ids if i not in (self.pad_id, self.sot_id, self.eot_id)])


class TextTransformer(Buildable, TextEncoder):
    """Token + learned position embeddings, ``layers`` pre-norm transformer blocks, final LayerNorm.

    ``causal=True`` with ``pooling="eot"`` is CLIP's text tower; ``causal=False`` with ``pooling="mean"`` a
    BERT-like one. ``forward(list[str]) -> (B, width)``. ``vocab_size`` fixes the embedding table; the
    tokenizer (``tokenizer_path``, or trained later with ``fit_tokenizer``) must not be larger.

    Args:
        vocab_size: Rows of the token-embedding table; the tokenizer must not be larger (49408 in CLIP).
        width: Model width (512 in CLIP's text tower).
        layers: Transformer blocks (12 in CLIP).
        heads: Attention heads per block, dividing ``width`` (8 in CLIP).
        context_length: Longest text in tokens, ``<sot>`` and ``<eot>`` included (77 in CLIP).
        causal: Causal attention mask (CLIP's text tower); False: bidirectional.
        pooling: ``"eot"`` (the end-of-text token's state, CLIP) or ``"mean"`` (mean over the tokens).
        dropout: Dropout probability, in [0, 1).
        tokenizer_path: A ``tokenizer.json`` to load; None: trained on the captions when fitting starts.
        min_frequency: Fewest occurrences of a merge for the BPE tokenizer trained on the captions.
        lowercase: Lowercase the texts before tokenizing (CLIP does).
    """

    def __init__(
        self,
        vocab_size: int = 4096,
        width: int = 256,
        layers: int = 4,
        heads: int = 4,
        context_length: int = 32,
        causal: bool = True,
        pooling: str = "eot",
        dropout: float = 0.0,
        tokenizer_path: str | None = None,
        min_frequency: int = 2,
        lowercase: bool = True,
    ) -> None:
        super().__init__()
        if pooling not in ("eot", "mean"):
            raise ValueError(f"pooling must be 'eot' or 'mean', got {pooling!r}")
        if width % heads:
            raise ValueError(f"width ({width}) must be divisible by heads ({heads})")
        self.vocab_size, self.context_length, self.causal, self.pooling = vocab_size, context_length, causal, pooling
        self.min_frequency, self.lowercase = min_frequency, lowercase
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.pos_embedding = nn.Parameter(torch.randn(context_length, width) * 0.01)
        block = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.ln_final = nn.LayerNorm(width)
        self.num_features = width
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.tokenizer: BPETokenizer | None = None
        if tokenizer_path:
            self.set_tokenizer(BPETokenizer.load(tokenizer_path))

    # -- the tokenizer --------------------------------------------------------------------------------------
    def set_tokenizer(self, tokenizer: BPETokenizer) -> None:
        if tokenizer.vocab_size > self.vocab_size:
            raise ValueError(
                f"the tokenizer has {tokenizer.vocab_size} tokens, more than the embedding table "
                f"(vocab_size={self.vocab_size})"
            )
        self.tokenizer = tokenizer

    def fit_tokenizer(self, texts: Iterable[str]) -> BPETokenizer:
        """Train the BPE on ``texts`` (e.g. all training captions) with at most ``vocab_size`` tokens."""
        tokenizer = BPETokenizer.train(texts, self.vocab_size, self.min_frequency, self.lowercase)
        self.set_tokenizer(tokenizer)
        return tokenizer

    def get_extra_state(self) -> Tensor:
        # the tokenizer travels in the state_dict as UTF-8 bytes: a tensor, so weights_only loading accepts it
        data = self.tokenizer.to_str().encode("utf-8") if self.tokenizer is not None else b""
        return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)

    def set_extra_state(self, state: Tensor) -> None:
        if isinstance(state, Tensor) and state.numel():
            self.set_tokenizer(BPETokenizer.from_str(bytes(state.cpu().tolist()).decode("utf-8")))

    def tokenize(self, texts: list[str]) -> Tensor:
        if self.tokenizer is None:
            raise RuntimeError(
                "TextTransformer has no tokenizer yet: give tokenizer_path, or call "
                "fit_tokenizer(captions) (CLIP does this from the datamodule when fit starts)"
            )
        return self.tokenizer.encode(list(texts), self.context_length)

    # -- the encoder ----------------------------------------------------------------------------------------
    def encode_ids(self, ids: Tensor) -> Tensor:
        """(B, T) token ids -> (B, width)."""
        t = ids.shape[1]
        x = self.token_embedding(ids) + self.pos_embedding[:t]  # (B, T, W)
        pad = ids == 0
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool, device=ids.device), 1) if self.causal else None
        # a causal tower never attends to the padding after <eot> anyway; a bidirectional one must be told
        x = self.transformer(x, mask=mask, src_key_padding_mask=None if self.causal else pad, is_causal=self.causal)
        x = self.ln_final(x)
        if self.pooling == "eot":
            eot = (~pad).sum(1) - 1  # <sot> text <eot> <pad>...: the last non-padding position
            return x[torch.arange(len(x), device=x.device), eot]
        keep = (~pad).unsqueeze(-1).to(x.dtype)
        return (x * keep).sum(1) / keep.sum(1).clamp_min(1)

    def forward(self, texts: list[str] | Tensor) -> Tensor:
        ids = texts if isinstance(texts, Tensor) else self.tokenize(texts)
        return self.encode_ids(ids.to(self.token_embedding.weight.device))
