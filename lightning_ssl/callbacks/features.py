"""What the monitoring callbacks (online probe, collapse monitor) read from a training step."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor


def step_features(trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any) -> Tensor | None:
    """The features of the step's first view *as ``embed`` computes them* (see ``SSLMethod``): the step's own
    ``features`` when it returned them, else ``embed(outputs["embed_input"])`` run here, without gradient and in
    eval mode (so the probe sees exactly what evaluation will), at the training precision. The result is stored
    back in ``outputs`` so the other callbacks of this step reuse it. None when the step gives neither."""
    if not isinstance(outputs, dict):
        return None
    if "features" in outputs:
        return outputs["features"]
    x = outputs.get("embed_input")
    if x is None:
        return None
    embed = getattr(pl_module, "embed", None)
    if not callable(embed):
        raise TypeError(f"{type(pl_module).__name__} returned embed_input but has no embed() to run on it")
    was_training = pl_module.training
    pl_module.eval()
    try:
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            features = embed(x).detach()
    finally:
        pl_module.train(was_training)
    outputs["features"] = features
    return features
