"""Text samples from a language model during pretraining, as W&B text tables and in ``<log dir>/samples.txt``."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from lightning_ssl.runs import log_dir


class TextSamples(L.Callback):
    """After every ``every_n_epochs``-th validation: the model's ``text_samples`` for the first ``num_samples``
    validation rows (GPT: a continuation of the row's first tokens; BERT: its guesses at the masked tokens;
    T5: the spans it fills in), next to the truth, and ``complete(prompt)`` for each of ``prompts``. Sampling
    draws from its own seeded generator, so samples are comparable across epochs and training randomness is
    untouched. Every process samples (a sharded model needs all of them for a forward); rank 0 logs: a table
    ``samples`` (step, input, output, reference) for loggers with ``log_text`` (W&B), the console, and
    ``samples.txt`` in the run's directory.

    Args:
        num_samples: Validation rows sampled.
        every_n_epochs: Sample after every this many validations; 0: off.
        prompts: Extra prompts to complete (GPT); None: none.
        max_new_tokens: Longest completion in tokens.
        temperature: Sampling temperature, > 0 (lower is more conservative).
        top_k: Sample from the k most likely tokens only; None: all.
        top_p: Nucleus sampling: the smallest set of tokens holding this probability mass; None: off.
        seed: Seed of the sampling generator (comparable samples across epochs).
    """

    def __init__(
        self,
        num_samples: int = 2,
        every_n_epochs: int = 1,
        prompts: list[str] | None = None,
        max_new_tokens: int = 64,
        temperature: float = 0.8,
        top_k: int | None = 50,
        top_p: float | None = None,
        seed: int = 0,
    ) -> None:
        if num_samples < 0 or every_n_epochs < 0 or max_new_tokens < 1:
            raise ValueError(
                f"need num_samples >= 0, every_n_epochs >= 0, max_new_tokens >= 1; got {num_samples}, "
                f"{every_n_epochs}, {max_new_tokens}"
            )
        self.num_samples, self.every_n_epochs, self.prompts = num_samples, every_n_epochs, list(prompts or [])
        self.max_new_tokens, self.seed = max_new_tokens, seed
        self.sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
        self._rows: torch.Tensor | None = None
        self.last: list[tuple[str, str, str]] = []

    def _active(self, trainer: L.Trainer) -> bool:
        return (
            self.every_n_epochs > 0
            and not trainer.sanity_checking
            and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        )

    def on_validation_batch_end(self, trainer, pl_module, outputs: Any, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0 and dataloader_idx == 0 and isinstance(batch, torch.Tensor):
            self._rows = batch[: self.num_samples].detach()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self._active(trainer):
            return
        g = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        rows = []
        if self._rows is not None and len(self._rows):
            rows += pl_module.text_samples(self._rows, self.max_new_tokens, generator=g, **self.sampling)
        for prompt in self.prompts:
            rows.append((prompt, pl_module.complete(prompt, self.max_new_tokens, generator=g, **self.sampling), ""))
        self.last = rows
        if trainer.is_global_zero and rows:
            self.publish(trainer, rows)

    def publish(self, trainer: L.Trainer, rows: list[tuple[str, str, str]]) -> None:
        step = trainer.global_step
        for logger in trainer.loggers:
            if hasattr(logger, "log_text"):
                logger.log_text(
                    key="samples",
                    columns=["step", "input", "output", "reference"],
                    data=[[step, *r] for r in rows],
                    step=step,
                )
        text = "\n".join(
            f"--- step {step} ---\ninput:     {i!r}\noutput:    {o!r}\nreference: {r!r}" for i, o, r in rows
        )
        rank_zero_info(text)
        folder = log_dir(trainer)  # not trainer.log_dir: a broadcast, and this runs on rank 0 only
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "samples.txt", "a", encoding="utf-8") as f:
            f.write(text + "\n")
