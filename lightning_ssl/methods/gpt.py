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

from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_ssl.methods.lm import LanguageModel, sample_logits
from lightning_ssl.modules.spec import Buildable
from lightning_ssl.modules.transformer import TransformerTrunk, init_gpt2
from lightning_ssl.optim import WarmupCosineLR

if TYPE_CHECKING:
    from lightning_ssl.modules.pretrained import HFCausalLM


def gpt_adamw(params: Any) -> torch.optim.Optimizer:
    """nanoGPT's optimizer: AdamW, lr 6e-4, betas (0.9, 0.95), weight decay 0.1 (on >= 2-D weights)."""
    return torch.optim.AdamW(params, lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)


class GPTNet(Buildable, TransformerTrunk):
    """The network: ``forward(idx (B, T)) -> logits (B, T, V)``, ``hidden(idx) -> (B, T, C)``.

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
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__(vocab_size, block_size, n_layer, n_head, n_embd, dropout, bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        init_gpt2(self, n_layer)
        self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf, 2017)

    def hidden(self, ids: Tensor, mask: Tensor | None = None, causal: bool = True) -> Tensor:
        return super().hidden(ids, mask, causal)

    def forward(self, idx: Tensor) -> Tensor:
        return self.lm_head(self.hidden(idx))  # (B, T, V)


class GPT(LanguageModel):
    """GPT: next-token prediction with a causal transformer (nanoGPT's layout), ``generate`` for sampling.

    Args:
        vocab_size: Token vocabulary size V; from the datamodule in a config (4096-token BPE here; 50257 for GPT-2).
        block_size: Context length T in tokens; from the datamodule in a config (1024 in GPT-2).
        n_layer: Transformer blocks (12 in GPT-2 small).
        n_head: Attention heads per block, dividing ``n_embd`` (12 in GPT-2 small).
        n_embd: Model width (768 in GPT-2 small).
        dropout: Dropout probability, in [0, 1) (0 for pretraining, as nanoGPT).
        bias: Biases in the linear layers and LayerNorms (GPT-2: True).
        pretrained: A folder holding a Hugging Face causal LM (``save_pretrained``); its own sizes (and tokenizer,
            if the folder has one) apply. None: train the network above from scratch.
        optimizer: Factory called with the parameter groups (no weight decay on biases and norm parameters);
            from a config, the ``class_path`` / ``init_args`` of any ``torch.optim`` optimizer. Default AdamW.
        scheduler: Factory called with the optimizer, stepped every optimizer step. Default ``WarmupCosineLR``
            (linear warm-up, then cosine over ``trainer.estimated_stepping_batches``); None: a constant LR.
    """

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
        tokenizer = None
        if pretrained:
            from lightning_ssl.modules.pretrained import HFCausalLM

            hf = HFCausalLM(pretrained)
            net: GPTNet | HFCausalLM = hf
            vocab_size, block_size, tokenizer = hf.vocab_size, hf.block_size, hf.tokenizer
        else:
            net = GPTNet(vocab_size, block_size, n_layer, n_head, n_embd, dropout, bias)
        super().__init__(net, vocab_size, optimizer, scheduler)
        self.save_hyperparameters()
        self.block_size = block_size
        if tokenizer is not None:  # the pretrained folder's
            self.set_tokenizer(tokenizer)

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
