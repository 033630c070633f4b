"""Speed switches that need no change to a method: channels-last memory format and ``torch.compile``."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn


def _to_channels_last(module: nn.Module, args: tuple) -> tuple:
    x = args[0]
    if isinstance(x, torch.Tensor) and x.ndim == 4:
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return args


class Performance(L.Callback):
    """``channels_last``: convolution weights (of the whole method, teachers included) and the backbone's input
    images in NHWC layout, which tensor-core convolutions and oneDNN prefer. ``compile``: ``torch.compile`` the
    backbone's forward in place (``nn.Module.compile``), so parameter names and checkpoints are unchanged.
    Both are off by default; in a config: ``performance: {channels_last: true, compile: true}``.
    ``compile_backend``: torch.compile's backend (``inductor`` generates kernels; ``aot_eager`` / ``eager`` only
    trace, for machines without a C compiler and for tests)."""

    def __init__(self, channels_last: bool = False, compile: bool = False, compile_mode: str | None = None,
                 compile_backend: str = "inductor") -> None:
        self.channels_last, self.compile, self.compile_mode = channels_last, compile, compile_mode
        self.compile_backend = compile_backend
        self._done = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._done:
            return
        self._done = True
        backbone = getattr(pl_module, "backbone", None)
        if self.channels_last:
            pl_module.to(memory_format=torch.channels_last)
            if isinstance(backbone, nn.Module):
                backbone.register_forward_pre_hook(_to_channels_last)
        if self.compile:
            if not isinstance(backbone, nn.Module):
                raise ValueError(f"compile: {type(pl_module).__name__} has no `backbone` module to compile")
            backbone.compile(mode=self.compile_mode, backend=self.compile_backend)
