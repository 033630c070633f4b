"""The model summary printed when ``fit`` starts, without what Lightning's default gets wrong for these models.

Lightning's summary has a FLOPs column that reads 0 for every module (it counts FLOPs only for a model with an
``example_input_array``, which SSL methods, fed multi-view batches, do not have) and, under ``bf16-mixed``, warns that
it cannot size the model. This one lists the top-level modules with their parameter counts and train/eval mode, and
sizes the weights from their own dtypes (mixed precision keeps fp32 weights).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelSummary as LightningModelSummary
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_summary.model_summary import get_human_readable_count


class ModelSummary(LightningModelSummary):
    """Top-level modules, parameters and weight size, printed once on rank 0 when ``fit`` starts.

    ``lightning_ssl.Trainer`` uses it in place of Lightning's default summary (``enable_model_summary=False``
    turns it off, as it does Lightning's).

    Args:
        max_depth: 1 lists the model's direct children; 2 also their children; 0 prints nothing.
    """

    def __init__(self, max_depth: int = 1) -> None:
        super().__init__(max_depth=max_depth)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._max_depth and trainer.is_global_zero:
            rank_zero_info(summary_table(pl_module, self._max_depth))


def summary_table(model: Any, max_depth: int = 1) -> str:
    """The summary as text: one row per module down to ``max_depth`` (name, type, parameters, mode), then the
    trainable / frozen / total parameter counts and the weights' size in MB."""
    rows = [(" ", "Name", "Type", "Params", "Mode")]
    for name, module in model.named_modules():
        if not name or name.count(".") >= max_depth:
            continue
        params = sum(p.numel() for p in module.parameters())
        rows.append(
            (str(len(rows) - 1), name, type(module).__name__, get_human_readable_count(params).strip(), _mode(module))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        " | ".join(c.ljust(w) if i != 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    size_mb = sum(p.numel() * p.element_size() for p in params) / 1e6
    lines += [
        "-" * len(lines[0]),
        f"{get_human_readable_count(trainable):<10}Trainable params",
        f"{get_human_readable_count(total - trainable):<10}Non-trainable params",
        f"{get_human_readable_count(total):<10}Total params",
        f"{size_mb:<10.3f}Weights' size (MB)",
    ]
    return "\n".join(lines)


def _mode(module: Any) -> str:
    modes = {m.training for m in module.modules()}
    return "train" if modes == {True} else "eval" if modes == {False} else "mixed"
