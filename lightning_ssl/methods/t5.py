"""T5: text-to-text pre-training of an encoder-decoder by span corruption (Raffel et al., JMLR 2020, sec. 3.1.4).

For each row of L tokens of packed text (L = data.block_size; ``compute_input_and_target_lengths(512)`` gives the
L = 568 whose inputs are exactly 512 tokens):
    src, tgt = span_corruption(row)     15% of the tokens, in spans of mean length 3, become sentinels
        src  (B, L_in):  Thank you <extra_id_0> me to your party <extra_id_1> week . </s>
        tgt  (B, L_tgt): <extra_id_0> for inviting <extra_id_1> last </s>
    memory = encoder(wte(src) + pos)                     (B, L_in, C)   bidirectional
    logits = decoder(wte([start] + tgt[:-1]) + pos, memory)  (B, L_tgt, V)  causal self-attention + cross-attention
    loss = cross_entropy(logits, tgt)                    teacher forcing on every target token
The network here is a small T5-shaped one of our own (pre-norm blocks, learned absolute positions where T5 uses
relative position buckets, GELU MLP, output layer tied to the shared embedding); ``pretrained`` starts from a
Hugging Face encoder-decoder (``T5ForConditionalGeneration``) in a local folder instead. ``val/accuracy`` is
the span-token accuracy: the predicted tokens of the corrupted spans, sentinels and </s> excluded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_ssl.methods.lm import LanguageModel, sample_logits
from lightning_ssl.modules.lm_masking import span_corruption, span_counts, span_lengths
from lightning_ssl.modules.spec import Buildable
from lightning_ssl.modules.transformer import Block, init_gpt2
from lightning_ssl.optim import WarmupCosineLR

if TYPE_CHECKING:
    from lightning_ssl.modules.pretrained import HFSeq2SeqLM


def t5_adamw(params: Any) -> torch.optim.Optimizer:
    """AdamW, lr 1e-3, weight decay 0.01 (T5 used Adafactor at 1e-2 with inverse-sqrt decay on a far larger batch)."""
    return torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01)


class T5Net(Buildable, nn.Module):
    """``encode(src (B, S), mask) -> (B, S, C)``; ``decode(tgt_in (B, T), memory, memory_mask) -> logits (B, T, V)``.

    Args:
        vocab_size: Token vocabulary size V (the embedding table's rows); from the datamodule in a config.
        block_size: Longest sequence T in tokens (the positional table's rows); from the datamodule in a config.
        n_layer: Encoder blocks.
        n_head: Attention heads per block; must divide ``n_embd``.
        n_embd: Model width C.
        dropout: Dropout probability, in [0, 1).
        bias: Use biases in the linear layers and LayerNorms.
        n_decoder_layer: Decoder blocks.
    """

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_layer: int,
        n_decoder_layer: int,
        n_head: int,
        n_embd: int,
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.vocab_size, self.block_size, self.num_features = vocab_size, block_size, n_embd
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.enc_pos, self.dec_pos = nn.Embedding(block_size, n_embd), nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.ModuleList(Block(n_embd, n_head, bias, dropout) for _ in range(n_layer))
        self.decoder = nn.ModuleList(Block(n_embd, n_head, bias, dropout, cross=True) for _ in range(n_decoder_layer))
        self.enc_ln, self.dec_ln = nn.LayerNorm(n_embd, bias=bias), nn.LayerNorm(n_embd, bias=bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        init_gpt2(self, n_layer + n_decoder_layer)
        self.lm_head.weight = self.wte.weight

    def _embed(self, ids: Tensor, pos: nn.Embedding) -> Tensor:
        t = ids.shape[1]
        if t > self.block_size:
            raise ValueError(f"a sequence of {t} tokens is longer than block_size={self.block_size}")
        return self.drop(self.wte(ids) + pos(torch.arange(t, device=ids.device)))

    def encode(self, src: Tensor, mask: Tensor | None = None) -> Tensor:
        x = self._embed(src, self.enc_pos)  # (B, S, C)
        for block in self.encoder:
            x = block(x, mask=mask)
        return self.enc_ln(x)

    def hidden(self, ids: Tensor) -> Tensor:
        return self.encode(ids)

    def decode(self, tgt_in: Tensor, memory: Tensor, memory_mask: Tensor | None = None) -> Tensor:
        x = self._embed(tgt_in, self.dec_pos)  # (B, T, C)
        for block in self.decoder:
            x = block(x, causal=True, memory=memory, memory_mask=memory_mask)
        return self.lm_head(self.dec_ln(x))  # (B, T, V)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        return self.decode(tgt_in, self.encode(src))


class T5(LanguageModel):
    """T5: an encoder-decoder trained to reconstruct corrupted spans (sentinel tokens) of the input.

    Args:
        vocab_size: Token vocabulary size V, sentinels included; from the datamodule in a config (32128 in T5).
        block_size: Raw tokens per row before corruption; from the datamodule in a config (568 gives T5's 512
            input tokens at density 0.15).
        n_layer: Encoder blocks (12 in T5-base).
        n_decoder_layer: Decoder blocks (12 in T5-base).
        n_head: Attention heads per block, dividing ``n_embd`` (12 in T5-base).
        n_embd: Model width (768 in T5-base).
        dropout: Dropout probability, in [0, 1) (0.1 in T5's fine-tuning; 0 here for pretraining).
        bias: Biases in the linear layers and LayerNorms (T5 has none).
        noise_density: Fraction of the tokens corrupted, in (0, 1) (0.15 in the paper).
        mean_noise_span_length: Mean length of a corrupted span in tokens (3 in the paper).
        pretrained: A folder holding a Hugging Face encoder-decoder (``T5ForConditionalGeneration``); its sizes and
            tokenizer apply. None: from scratch.
        optimizer: Factory called with the parameter groups (no weight decay on biases and norm parameters);
            from a config, the ``class_path`` / ``init_args`` of any ``torch.optim`` optimizer. Default AdamW.
        scheduler: Factory called with the optimizer, stepped every optimizer step. Default ``WarmupCosineLR``
            (linear warm-up, then cosine over ``trainer.estimated_stepping_batches``); None: a constant LR.
    """

    needs = ("sentinels", "eos")
    backbone: T5Net | HFSeq2SeqLM
    sentinel_ids: Tensor  # the tokenizer's sentinel token ids (a buffer set with the tokenizer)

    def __init__(
        self,
        vocab_size: int = 4096,
        block_size: int = 568,
        n_layer: int = 4,
        n_decoder_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 256,
        dropout: float = 0.0,
        bias: bool = True,
        noise_density: float = 0.15,
        mean_noise_span_length: float = 3.0,
        pretrained: str | None = None,
        optimizer: OptimizerCallable = t5_adamw,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        for name, v in (
            ("vocab_size", vocab_size),
            ("block_size", block_size),
            ("n_layer", n_layer),
            ("n_decoder_layer", n_decoder_layer),
            ("n_head", n_head),
            ("n_embd", n_embd),
        ):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        span_counts(block_size, noise_density, mean_noise_span_length)  # checks the two values
        tokenizer = None
        if pretrained:
            from lightning_ssl.modules.pretrained import HFSeq2SeqLM

            hf = HFSeq2SeqLM(pretrained)
            net: T5Net | HFSeq2SeqLM = hf
            vocab_size, tokenizer = hf.vocab_size, hf.tokenizer
        else:
            net = T5Net(vocab_size, block_size, n_layer, n_decoder_layer, n_head, n_embd, dropout, bias)
        super().__init__(net, vocab_size, optimizer, scheduler)
        self.save_hyperparameters()
        self.spans = span_counts(block_size, noise_density, mean_noise_span_length)[1]
        self.block_size, self.noise_density, self.mean_noise_span_length = (
            block_size,
            noise_density,
            mean_noise_span_length,
        )
        self.input_length, self.target_length = span_lengths(block_size, noise_density, mean_noise_span_length)
        if tokenizer is not None:  # the pretrained folder's
            self.set_tokenizer(tokenizer)

    def set_tokenizer(self, tokenizer) -> None:
        super().set_tokenizer(tokenizer)
        if len(tokenizer.sentinel_ids) < self.spans:
            raise ValueError(
                f"T5: rows of {self.block_size} tokens are corrupted in {self.spans} spans, but {tokenizer} "
                f"has only {len(tokenizer.sentinel_ids)} sentinels (raise data.sentinels)"
            )
        self.register_buffer("sentinel_ids", torch.tensor(tokenizer.sentinel_ids, device=self.device), persistent=False)

    @property
    def start_id(self) -> int:
        start = getattr(self.backbone, "decoder_start_id", None)
        return start if start is not None else (self._tok().pad_id or 0)

    def shift_right(self, tgt: Tensor) -> Tensor:
        """Decoder inputs: the start token, then the targets but the last (teacher forcing)."""
        return torch.cat([torch.full_like(tgt[:, :1], self.start_id), tgt[:, :-1]], dim=1)

    def corrupt(self, ids: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        return span_corruption(
            ids,
            self.sentinel_ids.to(ids.device),
            self._eos_id(),
            self.noise_density,
            self.mean_noise_span_length,
            generator,
        )

    def predict_targets(self, rows: Tensor, generator: torch.Generator | None = None):
        src, tgt = self.corrupt(rows[:, :-1], generator)  # (B, L_in), (B, L_tgt)
        logits = self.backbone(src, self.shift_right(tgt))  # (B, L_tgt, V)
        scored = ~torch.isin(tgt, self.sentinel_ids.to(tgt.device)) & (tgt != self._eos_id())
        return logits.flatten(0, 1), tgt.flatten(), scored.flatten()

    @torch.no_grad()
    def generate(
        self,
        src: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """(B, S) encoder inputs -> (B, <= max_new_tokens) decoded tokens, stopping once every row has </s>."""
        was_training = self.training
        self.eval()
        memory = self.backbone.encode(src)
        out = torch.full((len(src), 1), self.start_id, dtype=torch.long, device=src.device)
        done = torch.zeros(len(src), dtype=torch.bool, device=src.device)
        for _ in range(max_new_tokens):
            logits = self._valid_logits(self.backbone.decode(out[:, -self.block_size :], memory)[:, -1])
            nxt = sample_logits(logits, temperature, top_k, top_p, generator)
            nxt = nxt.masked_fill(done, self._tok().pad_id or 0)
            out = torch.cat([out, nxt[:, None]], dim=1)
            done |= nxt == self._tok().eos_id
            if done.all():
                break
        self.train(was_training)
        return out[:, 1:]

    def _eos_id(self) -> int:
        """The tokenizer's </s>. ``set_tokenizer`` refuses a tokenizer without one."""
        eos = self._tok().eos_id
        if eos is None:
            raise ValueError(f"T5 needs a tokenizer with an eos token; {self._tok()} has none")
        return eos

    def _show(self, ids: Tensor) -> str:
        tok = self._tok()
        keep = [i for i in ids.tolist() if i not in (tok.pad_id, tok.eos_id)]
        return tok.decode(keep, skip_special_tokens=False)

    def complete(self, prompt: str, max_new_tokens: int = 64, **sampling: Any) -> str:
        """What the model puts in the sentinels (``<extra_id_0>`` ...) of ``prompt``."""
        tok = self._tok()
        src = torch.tensor([tok.encode_documents([prompt])[0][: self.block_size]], device=self.device)
        return self._show(self.generate(src, max_new_tokens, **sampling)[0])

    def text_samples(self, rows: Tensor, max_new_tokens: int = 64, **sampling: Any):
        g = torch.Generator(device=self.device).manual_seed(0)
        src, tgt = self.corrupt(rows[:, :-1].to(self.device), g)
        out = self.generate(src, min(max_new_tokens, self.target_length), **sampling)
        return [(self._show(s), self._show(o), self._show(t)) for s, o, t in zip(src, out, tgt, strict=True)]
