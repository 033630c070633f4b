"""BERT: masked-language-model pre-training of a bidirectional transformer (Devlin et al., NAACL 2019, sec. 3.1).

For each row of T tokens of packed text (documents ended by [SEP] / <eos>):
    inputs, labels = mlm_mask(row)          15% of the non-special tokens selected: 80% -> [MASK], 10% -> a random
                                            token, 10% unchanged; labels -100 on the others (Hugging Face's draws)
    h = blocks(wte(inputs) + wpe(0..T-1))   (B, T, C)   bidirectional self-attention, padding masked out
    logits = head(h[selected])              (M, V)      only the M selected positions are decoded
    loss = cross_entropy(logits, labels[selected])
The head is BERT's (dense -> GELU -> LayerNorm -> output layer tied to the token embedding, plus a bias). No
next-sentence prediction (RoBERTa showed it does not help). ``pretrained``: start from a Hugging Face masked LM
in a local folder, e.g. ``packaged:all-MiniLM-L6-v2``: a sentence-transformers checkpoint that has no MLM head,
so the head's transform starts fresh (the output layer is tied to the pretrained embedding).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_ssl.losses.lm import IGNORE_INDEX
from lightning_ssl.methods.lm import LanguageModel
from lightning_ssl.modules.lm_masking import mlm_mask
from lightning_ssl.modules.spec import Buildable
from lightning_ssl.modules.transformer import TransformerTrunk, init_gpt2
from lightning_ssl.optim import WarmupCosineLR

if TYPE_CHECKING:
    from lightning_ssl.modules.pretrained import HFMaskedLM


def bert_adamw(params: Any) -> torch.optim.Optimizer:
    """BERT's optimizer: Adam(W), lr 1e-4, betas (0.9, 0.999), weight decay 0.01."""
    return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=0.01)


class BERTNet(Buildable, TransformerTrunk):
    """``hidden(ids (B, T), mask (B, T) or None) -> (B, T, C)``; ``head(h (..., C)) -> logits (..., V)``.

    Args:
        vocab_size: Token vocabulary size V (the embedding table's rows); from the datamodule in a config.
        block_size: Longest sequence T in tokens (the positional table's rows); from the datamodule in a config.
        n_layer: Transformer blocks.
        n_head: Attention heads per block; must divide ``n_embd``.
        n_embd: Model width C.
        dropout: Dropout probability, in [0, 1).
        bias: Use biases in the linear layers and LayerNorms.
    """

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_layer: int,
        n_head: int,
        n_embd: int,
        dropout: float = 0.1,
        bias: bool = True,
    ) -> None:
        super().__init__(vocab_size, block_size, n_layer, n_head, n_embd, dropout, bias)
        self.transform = nn.Sequential(nn.Linear(n_embd, n_embd), nn.GELU(), nn.LayerNorm(n_embd))
        self.decoder = nn.Linear(n_embd, vocab_size)
        init_gpt2(self, n_layer)
        self.decoder.weight = self.wte.weight  # tied output layer, own bias

    def head(self, h: Tensor) -> Tensor:
        return self.decoder(self.transform(h))

    def forward(self, ids: Tensor, selected: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """Logits (B, T, V), or (M, V) at the ``selected`` positions only (what training decodes)."""
        h = self.hidden(ids, mask)
        return self.head(h if selected is None else h[selected])


class BERT(LanguageModel):
    """BERT masked-language modelling: 15% of the tokens selected, 80/10/10 [MASK]/random/kept, loss on them.

    Args:
        vocab_size: Token vocabulary size V; from the datamodule in a config (30522 for BERT's WordPiece).
        block_size: Longest sequence in tokens; from the datamodule in a config (512 in BERT).
        n_layer: Transformer encoder blocks (12 in BERT-base).
        n_head: Attention heads per block, dividing ``n_embd`` (12 in BERT-base).
        n_embd: Model width (768 in BERT-base).
        dropout: Dropout probability, in [0, 1) (0.1 in BERT).
        bias: Biases in the linear layers and LayerNorms.
        mlm_probability: Fraction of the non-special tokens selected for prediction, in (0, 1) (0.15 in the paper).
        mask_fraction: Of the selected tokens, the fraction replaced by [MASK] (0.8 in the paper).
        random_fraction: Of the selected tokens, the fraction replaced by a random token (0.1 in the paper); the
            rest are kept unchanged.
        pretrained: A folder holding a Hugging Face masked LM, or ``packaged:all-MiniLM-L6-v2``; its sizes and
            tokenizer apply. None: from scratch.
        optimizer: Factory called with the parameter groups (no weight decay on biases and norm parameters);
            from a config, the ``class_path`` / ``init_args`` of any ``torch.optim`` optimizer. Default AdamW.
        scheduler: Factory called with the optimizer, stepped every optimizer step. Default ``WarmupCosineLR``
            (linear warm-up, then cosine over ``trainer.estimated_stepping_batches``); None: a constant LR.
    """

    needs = ("mask",)
    backbone: BERTNet | HFMaskedLM
    special_ids: Tensor  # the tokenizer's special token ids (a buffer set with the tokenizer)

    def __init__(
        self,
        vocab_size: int = 4096,
        block_size: int = 128,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 256,
        dropout: float = 0.1,
        bias: bool = True,
        mlm_probability: float = 0.15,
        mask_fraction: float = 0.8,
        random_fraction: float = 0.1,
        pretrained: str | None = None,
        optimizer: OptimizerCallable = bert_adamw,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        for name, v in (
            ("vocab_size", vocab_size),
            ("block_size", block_size),
            ("n_layer", n_layer),
            ("n_head", n_head),
            ("n_embd", n_embd),
        ):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if not 0 < mlm_probability < 1:
            raise ValueError(f"mlm_probability must lie in (0, 1), got {mlm_probability}")
        if mask_fraction < 0 or random_fraction < 0 or mask_fraction + random_fraction > 1:
            raise ValueError(
                f"mask_fraction ({mask_fraction}) + random_fraction ({random_fraction}) must lie in [0, 1]"
            )
        tokenizer = None
        if pretrained:
            from lightning_ssl.modules.pretrained import HFMaskedLM

            hf = HFMaskedLM(pretrained)
            net: BERTNet | HFMaskedLM = hf
            vocab_size, block_size, tokenizer = hf.vocab_size, hf.block_size, hf.tokenizer
        else:
            net = BERTNet(vocab_size, block_size, n_layer, n_head, n_embd, dropout, bias)
        super().__init__(net, vocab_size, optimizer, scheduler)
        self.save_hyperparameters()
        self.block_size = block_size
        self.mlm_probability, self.mask_fraction, self.random_fraction = mlm_probability, mask_fraction, random_fraction
        if tokenizer is not None:  # the pretrained folder's
            self.set_tokenizer(tokenizer)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        missing = getattr(self.backbone, "missing", None)
        if missing and self.trainer.ckpt_path is None and self.global_rank == 0:  # a reload or resume has them
            logging.getLogger("lightning.pytorch").warning(
                f"{self.hparams.get('pretrained')}: {len(missing)} tensors are not in the pretrained checkpoint and "
                f"start fresh (the MLM head of a sentence encoder): {missing}"
            )

    def set_tokenizer(self, tokenizer) -> None:
        super().set_tokenizer(tokenizer)
        self.register_buffer(
            "special_ids", torch.tensor(tokenizer.special_ids, dtype=torch.long, device=self.device), persistent=False
        )

    def special_mask(self, ids: Tensor) -> Tensor:
        """(B, T) bool: special tokens and padding, never selected."""
        return torch.isin(ids, self.special_ids.to(ids.device))

    def predict_targets(self, rows: Tensor, generator: torch.Generator | None = None):
        ids = rows[:, :-1]  # (B, T): the rows tile the text
        inputs, labels = mlm_mask(
            ids,
            self.special_mask(ids),
            self._mask()[0],
            self._tok().vocab_size,
            self.mlm_probability,
            self.mask_fraction,
            self.random_fraction,
            generator,
        )
        selected = labels != IGNORE_INDEX
        logits = self.backbone(inputs, selected)  # (M, V): no padding in packed rows
        return logits, labels[selected], None

    def embed(self, ids: Tensor) -> Tensor:
        mask = ~self.special_mask(ids) if self.tokenizer is not None else None
        h = self.backbone.hidden(ids, None)
        if mask is None:
            return h.mean(1)
        w = mask.unsqueeze(-1).to(h.dtype)
        return (h * w).sum(1) / w.sum(1).clamp_min(1)

    # -- text in, text out -------------------------------------------------------------------------------------
    @torch.no_grad()
    def fill_mask(self, text: str | list[str], top_k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``top_k`` most likely (token, probability) for every [MASK] (or the tokenizer's mask token) of
        ``text``, in order; a list of texts gives one such list per text, concatenated."""
        tok = self._tok()
        texts = [text] if isinstance(text, str) else list(text)
        mask_token = self._mask()[1]
        rows = [
            ids[: self.block_size] for ids in tok.encode_documents([t.replace("[MASK]", mask_token) for t in texts])
        ]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tok.pad_id or 0, dtype=torch.long, device=self.device)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        valid = (
            torch.arange(width, device=self.device)[None]
            < torch.tensor([len(r) for r in rows], device=self.device)[:, None]
        )
        was_training = self.training
        self.eval()
        h = self.backbone.hidden(ids, valid if not valid.all() else None)
        self.train(was_training)
        where = ids == tok.mask_id
        probs = self._valid_logits(self.backbone.head(h[where]).float()).softmax(-1)  # (masks, V)
        top = probs.topk(top_k, dim=-1)
        return [
            [(self._show(i), p) for i, p in zip(idx.tolist(), val.tolist(), strict=True)]
            for val, idx in zip(*top, strict=True)
        ]

    def _mask(self) -> tuple[int, str]:
        """The tokenizer's mask token: (id, text). ``set_tokenizer`` refuses a tokenizer without one."""
        tok = self._tok()
        if tok.mask_id is None or tok.mask_token is None:
            raise ValueError(f"BERT needs a tokenizer with a mask token; {tok} has none")
        return tok.mask_id, tok.mask_token

    def _show(self, i: int) -> str:
        return self._tok().decode([i]).strip() or self._tok().id_to_token(i) or ""

    def complete(self, prompt: str, max_new_tokens: int = 0, **_: Any) -> str:
        """``prompt`` with every [MASK] replaced by the most likely token."""
        parts = prompt.replace(self._mask()[1], "[MASK]").split("[MASK]")
        fills = [f[0][0] for f in self.fill_mask(prompt, top_k=1)]
        # a prompt longer than the context has masks past its end: those stay unfilled (strict=False)
        return parts[0] + "".join(fill + part for fill, part in zip(fills, parts[1:], strict=False))

    def text_samples(self, rows: Tensor, max_new_tokens: int = 64, **_: Any):
        """(masked row, the row with the model's guesses at the selected tokens, the original row)."""
        tok = self._tok()
        ids = rows[:, :-1][:, :max_new_tokens].to(self.device)
        g = torch.Generator(device=ids.device).manual_seed(0)
        inputs, labels = mlm_mask(
            ids,
            self.special_mask(ids),
            self._mask()[0],
            tok.vocab_size,
            self.mlm_probability,
            self.mask_fraction,
            self.random_fraction,
            g,
        )
        was_training = self.training
        self.eval()
        with torch.no_grad():
            guess = self._valid_logits(self.backbone.head(self.backbone.hidden(inputs)).float()).argmax(-1)
        self.train(was_training)
        filled = torch.where(labels != IGNORE_INDEX, guess, inputs)
        return [
            (tok.decode(x, skip_special_tokens=False), tok.decode(f), tok.decode(r))
            for x, f, r in zip(inputs, filled, ids, strict=True)
        ]
