"""What GPT, BERT and T5 share: the tokenizer, the token-level loss and metrics, sampling.

A language model is an ``SSLMethod`` whose backbone is its transformer: ``performance.compile`` compiles it (the
training step goes through the network's ``forward``), and the optimizer's weight decay falls on the >= 2-D weights
only, embeddings included, as in nanoGPT. Each subclass says what its step predicts in
``predict_targets(rows) -> (logits (N, V), targets (N,), scored (N,))``: next tokens (GPT), the masked tokens
(BERT), the corrupted spans (T5); the rest is here:

* **the tokenizer** comes from the datamodule when fitting starts (trained on the corpus or loaded), or from the
  pretrained model's folder; it is saved in every checkpoint and as ``tokenizer.json`` in the run's directory. A
  tokenizer that differs from the model's own (a checkpoint's, a pretrained model's) is an error, never a silent
  reinterpretation of the token ids; so is one larger than the embedding table.
* **metrics**: ``train/loss``, ``train/ppl``, ``train/lr``, ``train/tokens_per_s`` (all processes); validation sums
  the loss and correct predictions over all scored tokens of all processes: ``val/loss``, ``val/ppl`` =
  exp(val/loss), ``val/accuracy`` (top-1 over the tokens ``scored`` marks). Validation masks and spans come from a
  fixed seed, so every validation scores the same corruption.
* ``training_step`` returns only the loss: the kNN monitor, online probe and collapse monitor have no image
  features to look at and stay idle (the corpus datamodule has no labels).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_ssl.data.sampling import mix_seed
from lightning_ssl.losses.lm import IGNORE_INDEX, token_cross_entropy
from lightning_ssl.methods.base import SSLMethod
from lightning_ssl.modules.distributed import world_size
from lightning_ssl.modules.tokenizer import TextTokenizer
from lightning_ssl.optim import WarmupCosineLR
from lightning_ssl.runs import log_dir

if TYPE_CHECKING:
    from lightning_ssl.methods.t5 import T5Net
    from lightning_ssl.modules.pretrained import HFCausalLM, HFMaskedLM, HFSeq2SeqLM
    from lightning_ssl.modules.transformer import TransformerTrunk


def sample_logits(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(B, V) logits -> (B,) token ids. ``temperature`` 0 (or ``top_k`` 1) is greedy; ``top_k`` keeps the k most
    likely tokens, ``top_p`` the smallest set whose probability reaches p (nucleus sampling)."""
    if temperature < 0 or (top_k is not None and top_k < 1) or (top_p is not None and not 0 < top_p <= 1):
        raise ValueError(f"need temperature >= 0, top_k >= 1, 0 < top_p <= 1; got {temperature}, {top_k}, {top_p}")
    if temperature == 0 or top_k == 1:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        before = sorted_logits.softmax(-1).cumsum(-1) - sorted_logits.softmax(-1)  # mass of the more likely tokens
        sorted_logits = sorted_logits.masked_fill(before >= top_p, float("-inf"))  # the most likely one always stays
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


class LanguageModel(SSLMethod):
    """Base of the language models (see the module docstring). ``vocab_size`` is the embedding table's size.

    Args:
        net: The transformer network (``GPTNet``, ``BERTNet``, ``T5Net`` or a Hugging Face wrapper).
        vocab_size: The embedding table's size; a tokenizer larger than it is refused.
        optimizer: Factory called with the parameter groups (no weight decay on biases and norm parameters);
            from a config, the ``class_path`` / ``init_args`` of any ``torch.optim`` optimizer. Default AdamW.
        scheduler: Factory called with the optimizer, stepped every optimizer step. Default ``WarmupCosineLR``
            (linear warm-up, then cosine over ``trainer.estimated_stepping_batches``); None: a constant LR.
    """

    needs: tuple[str, ...] = ()  # token roles the objective needs: "mask" (BERT), "sentinels" and "eos" (T5)
    backbone: TransformerTrunk | T5Net | HFCausalLM | HFMaskedLM | HFSeq2SeqLM  # each has hidden(ids)

    def __init__(
        self,
        net: nn.Module,
        vocab_size: int,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        super().__init__(net, optimizer, scheduler)
        self.vocab_size = vocab_size
        self.tokenizer: TextTokenizer | None = None
        self._val: Tensor | None = None
        self._tick: float | None = None

    # -- the tokenizer ---------------------------------------------------------------------------------------
    def set_tokenizer(self, tokenizer: TextTokenizer) -> None:
        name = type(self).__name__
        if tokenizer.vocab_size > self.vocab_size:
            raise ValueError(
                f"{name}: the tokenizer ({tokenizer}) has {tokenizer.vocab_size} tokens, more than the "
                f"model's embedding table (vocab_size={self.vocab_size}): raise model vocab_size or use "
                f"the tokenizer the model was trained with"
            )
        missing = [
            r
            for r in self.needs
            if (not tokenizer.sentinel_ids if r == "sentinels" else getattr(tokenizer, f"{r}_id") is None)
        ]
        if missing:
            raise ValueError(
                f"{name} needs a tokenizer with {' and '.join(missing)} tokens; {tokenizer} has none "
                f"(our trained tokenizers have <mask>; T5 sentinels come with data.sentinels)"
            )
        self.tokenizer = tokenizer

    def _bind_tokenizer(self) -> None:
        """Take the datamodule's tokenizer, or check that it is the model's own."""
        data_tok = getattr(getattr(self._trainer, "datamodule", None), "tokenizer", None)
        if data_tok is None:
            if self.tokenizer is None:
                raise ValueError(f"{type(self).__name__} has no tokenizer and the datamodule gives none")
            return
        if self.tokenizer is None:
            self.set_tokenizer(data_tok)
        elif self.tokenizer != data_tok:
            raise ValueError(
                f"{type(self).__name__}: the data's tokenizer ({data_tok}) is not the model's own "
                f"({self.tokenizer}): the token ids would mean different things. Give the data the "
                f"model's tokenizer (data.tokenizer: the run's tokenizer.json, or the pretrained folder)."
            )

    def on_fit_start(self) -> None:
        self._bind_tokenizer()
        if self.global_rank == 0:
            ckpt = self.trainer.checkpoint_callback
            folder = Path(getattr(ckpt, "dirpath", None) or log_dir(self.trainer))  # no broadcast on rank 0 alone
            self._tok().save(folder / "tokenizer.json")  # also stored in every checkpoint

    def on_validation_start(self) -> None:
        if self.tokenizer is None:
            self._bind_tokenizer()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.tokenizer is not None:
            checkpoint["tokenizer"] = self.tokenizer.to_str()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("hyper_parameters", {}).get("vocab_size")
        if isinstance(saved, int) and saved != self.vocab_size:  # before the generic architecture check: say why
            raise ValueError(
                f"the checkpoint's {type(self).__name__} has vocab_size={saved}, this one {self.vocab_size}: "
                f"use the checkpoint's tokenizer (data.tokenizer: its tokenizer.json)"
            )
        super().on_load_checkpoint(checkpoint)
        if checkpoint.get("tokenizer"):
            self.set_tokenizer(TextTokenizer.from_str(checkpoint["tokenizer"], source="checkpoint"))

    # -- the objective ---------------------------------------------------------------------------------------
    def predict_targets(
        self, rows: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """(B, T + 1) token rows -> logits (N, V), targets (N,) (-100: not scored), and the targets that count
        for accuracy (N,) bool (None: all)."""
        raise NotImplementedError

    def embed(self, ids: Tensor) -> Tensor:
        """(B, T) token ids -> (B, C): the mean of the final hidden states (a sentence representation)."""
        return self.backbone.hidden(ids).mean(1)

    def training_step(self, batch: Tensor, batch_idx: int) -> dict[str, Tensor]:
        logits, targets, _ = self.predict_targets(batch)
        loss = token_cross_entropy(logits, targets)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/ppl", loss.detach().exp())
        if self._trainer is not None and self.trainer.optimizers:
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return {"loss": loss}

    def on_train_batch_end(self, outputs: Any, batch: Tensor, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._tick is not None:  # one full step: data, forward, backward, optimizer, callbacks
            self.log("train/tokens_per_s", batch[:, :-1].numel() * world_size() / (now - self._tick))
        self._tick = now

    def on_train_epoch_start(self) -> None:
        self._tick = None  # the gap between epochs (validation) is not a training step

    def validation_step(self, batch: Tensor, batch_idx: int, dataloader_idx: int = 0) -> None:
        g = torch.Generator(device=batch.device).manual_seed(mix_seed(1234, batch_idx, self.global_rank))
        logits, targets, scored = self.predict_targets(batch, generator=g)
        keep = targets != IGNORE_INDEX
        scored = keep if scored is None else scored & keep
        loss_sum = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
        correct = ((logits.argmax(-1) == targets) & scored).sum()
        stats = torch.stack([loss_sum.detach(), keep.sum().float(), correct.float(), scored.sum().float()])
        self._val = stats if self._val is None else self._val + stats

    def test_step(self, batch: Tensor, batch_idx: int, dataloader_idx: int = 0) -> None:
        return self.validation_step(batch, batch_idx, dataloader_idx)

    def on_validation_epoch_start(self) -> None:
        self._val = None

    def on_validation_epoch_end(self) -> None:
        stats = self._val if self._val is not None else torch.zeros(4, device=self.device)
        if self._trainer is not None:
            stats = self.trainer.strategy.reduce(stats, reduce_op="sum")
        self._val = None
        if stats[1] == 0:
            return
        loss = stats[0] / stats[1]
        self.log("val/loss", loss, prog_bar=True, sync_dist=False)
        self.log("val/ppl", loss.exp())
        self.log("val/accuracy", stats[2] / stats[3].clamp_min(1))

    on_test_epoch_start, on_test_epoch_end = on_validation_epoch_start, on_validation_epoch_end

    def predict_step(self, batch: Tensor, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self.embed(batch[:, :-1])

    # -- text in, text out -------------------------------------------------------------------------------------
    def _tok(self) -> TextTokenizer:
        if self.tokenizer is None:
            raise RuntimeError(
                f"{type(self).__name__} has no tokenizer yet: fit it on a datamodule, load a checkpoint, "
                f"or call set_tokenizer(TextTokenizer.load(path))"
            )
        return self.tokenizer

    def _ids(self, text: str) -> Tensor:
        return torch.tensor([self._tok().encode(text)], dtype=torch.long, device=self.device)

    def _valid_logits(self, logits: Tensor) -> Tensor:
        """Rows of the embedding table beyond the tokenizer's vocabulary are never sampled."""
        n = self._tok().vocab_size
        return (
            logits
            if n >= logits.shape[-1]
            else logits.masked_fill(torch.arange(logits.shape[-1], device=logits.device) >= n, float("-inf"))
        )

    def text_samples(self, rows: Tensor, max_new_tokens: int = 64, **sampling: Any) -> list[tuple[str, str, str]]:
        """(input, output, reference) texts for a few validation rows (the ``TextSamples`` callback logs them)."""
        raise NotImplementedError
