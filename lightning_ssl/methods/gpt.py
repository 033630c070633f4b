"""GPT: generative pre-training of a causal transformer (Radford et al., 2018; GPT-2, 2019), in nanoGPT's layout.

For each row of T + 1 tokens of packed text:
    x, y = row[:-1], row[1:]                                     (B, T) inputs, (B, T) next tokens
    h = wte(x) + wpe(0..T-1)                                     (B, T, C)   token + learned position embeddings
    h = blocks(h)                                                 causal self-attention: position t sees 0..t only
    logits = ln_f(h) @ wte.T                                      (B, T, V)   output layer tied to the embedding
    loss = cross_entropy(logits, y)                               every position predicts its next token
Generation appends one sampled token at a time (temperature, top-k, top-p), the context cropped to block_size.
AdamW with weight decay on the >= 2-D weights only, warmup + cosine; ``performance.compile: true`` compiles the
transformer. ``pretrained``: start from a Hugging Face causal LM saved in a local folder (GPT-2, ...) instead.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_ssl.methods.lm import LanguageModel, sample_logits
from lightning_ssl.modules.spec import Buildable
from lightning_ssl.modules.transformer import Block, init_gpt2
from lightning_ssl.optim import WarmupCosineLR


def gpt_adamw(params: Any) -> torch.optim.Optimizer:
    """nanoGPT's optimizer: AdamW, lr 6e-4, betas (0.9, 0.95), weight decay 0.1 (on >= 2-D weights)."""
    return torch.optim.AdamW(params, lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)


class GPTNet(Buildable, nn.Module):
    """The network: ``forward(idx (B, T)) -> logits (B, T, V)``, ``hidden(idx) -> (B, T, C)``."""

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_layer: int,
        n_head: int,
        n_embd: int,
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.vocab_size, self.block_size, self.num_features = vocab_size, block_size, n_embd
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, bias, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        init_gpt2(self, n_layer)
        self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf, 2017)

    def hidden(self, idx: Tensor) -> Tensor:
        t = idx.shape[1]
        if t > self.block_size:
            raise ValueError(f"a sequence of {t} tokens is longer than block_size={self.block_size}")
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(t, device=idx.device)))  # (B, T, C)
        for block in self.blocks:
            x = block(x, causal=True)
        return self.ln_f(x)

    def forward(self, idx: Tensor) -> Tensor:
        return self.lm_head(self.hidden(idx))  # (B, T, V)


class GPT(LanguageModel):
    def __init__(
        self,
        vocab_size: int = 4096,
        block_size: int = 256,
        n_layer: int = 6,
        n_head: int = 6,
        n_embd: int = 384,
        dropout: float = 0.0,
        bias: bool = True,
        pretrained: str | None = None,
        optimizer: OptimizerCallable = gpt_adamw,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        """``vocab_size`` and ``block_size`` come from the datamodule in a config. ``pretrained``: a folder holding a
        Hugging Face causal LM (``save_pretrained``); its own sizes (and tokenizer, if the folder has one) apply."""
        for name, v in (
            ("vocab_size", vocab_size),
            ("block_size", block_size),
            ("n_layer", n_layer),
            ("n_head", n_head),
            ("n_embd", n_embd),
        ):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if pretrained:
            from lightning_ssl.modules.pretrained import HFCausalLM

            net = HFCausalLM(pretrained)
            vocab_size, block_size = net.vocab_size, net.block_size
        else:
            net = GPTNet(vocab_size, block_size, n_layer, n_head, n_embd, dropout, bias)
        super().__init__(net, vocab_size, optimizer, scheduler)
        self.save_hyperparameters()
        self.block_size = block_size
        if pretrained and net.tokenizer is not None:
            self.set_tokenizer(net.tokenizer)

    def predict_targets(self, rows: Tensor, generator: torch.Generator | None = None):
        x, y = rows[:, :-1], rows[:, 1:]  # (B, T)
        logits = self.backbone(x)  # (B, T, V)
        return logits.flatten(0, 1), y.flatten(), None

    @torch.no_grad()
    def generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """(B, T) prompt ids -> (B, T + max_new_tokens), one sampled token at a time (``sample_logits``)."""
        was_training = self.training
        self.eval()
        for _ in range(max_new_tokens):
            logits = self.backbone(idx[:, -self.block_size :])[:, -1, :]  # (B, V) at the last position
            if self.tokenizer is not None:
                logits = self._valid_logits(logits)
            idx = torch.cat([idx, sample_logits(logits, temperature, top_k, top_p, generator)[:, None]], dim=1)
        self.train(was_training)
        return idx

    def complete(self, prompt: str, max_new_tokens: int = 64, **sampling: Any) -> str:
        """The text that follows ``prompt``."""
        ids = self._ids(prompt) if prompt else torch.full((1, 1), self._tok().eos_id or 0, device=self.device)
        return self._tok().decode(self.generate(ids, max_new_tokens, **sampling)[0, ids.shape[1] :])

    def text_samples(self, rows: Tensor, max_new_tokens: int = 64, prompt_tokens: int = 16, **sampling: Any):
        prompts = rows[:, :prompt_tokens].to(self.device)
        out = self.generate(prompts, max_new_tokens, **sampling)
        tok = self._tok()
        return [
            (
                tok.decode(p),
                tok.decode(o[prompt_tokens:]),
                tok.decode(r[prompt_tokens : prompt_tokens + max_new_tokens]),
            )
            for p, o, r in zip(prompts, out, rows, strict=True)
        ]
