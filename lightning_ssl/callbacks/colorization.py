"""Pictures of a colorization model at work: grey input | colourized | original, one row per image."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.utils import make_grid

from lightning_ssl.callbacks.images import _ImageCallback


def render_colorization(grey: Tensor, colourized: Tensor, original: Tensor) -> Tensor:
    """One row per image: grey | colourized | original, all RGB (B, 3, H, W) in [0, 1] -> grid (3, H', W')."""
    tiles = torch.stack([grey, colourized, original], dim=1).flatten(0, 1).float().cpu()
    return make_grid(tiles.clamp(0, 1), nrow=3, padding=1, pad_value=1.0)


class ColorizationImages(_ImageCallback):
    """Every ``every_n_epochs`` training epochs, colourize a fixed set of images (the first validation batch, or
    the first training view until one has been seen) with ``pl_module.colorize``, save the grid as
    ``<log dir>/images/colorization_epoch<NNN>.png`` (or under ``out_dir``) and log it to W&B when a
    ``WandbLogger`` is attached. Works with ``lightning_ssl.methods.Colorization``."""

    name = "colorization"

    def render(self, pl_module, images: Tensor, trainer) -> tuple[Tensor, list[str], str]:
        grid = render_colorization(*pl_module.colorize(images))
        return grid, ["grey input", "colourized", "original"], "colorization"
