"""Jigsaw: Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles (Noroozi & Favaro, ECCV 2016).

Cut each image into a 3x3 grid of tiles, shuffle them by one of P fixed permutations, and ask which one:
    tiles = crop(x)           9 tiles, each at a random offset inside its cell (gap + jitter: no edge cues),
                              each standardized on its own (no brightness/contrast cues)
    p ~ U{1..P}; tiles = tiles[perm_p]
    h_i = f(tile_i)           the shared tile encoder (the backbone, "context-free network")
    loss = CE(g([h_1, ..., h_9]), p)    classifier over the permutation index on the concatenated features
The permutation set is chosen for large Hamming distances (``hamming_permutation_set``), generated from a seed
and stored as a buffer, so a checkpoint carries the exact task it was trained on. Solving the puzzle requires
recognising object parts and how they fit together.

``embed(x)`` is the mean of the tile encoder's features over the 9 tiles of the unshuffled grid (centred in
their cells, standardized like in training). The encoder only ever sees tiles, so this keeps the downstream
input distribution the one it was trained on (BatchNorm statistics included), and during training the same
mean of the (shuffled) tile features comes for free as the online probe's input: averaging ignores the order.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lightning_ssl.methods.base import SSLMethod
from lightning_ssl.modules.backbones import Backbone
from lightning_ssl.modules.heads import ProjectionHead
from lightning_ssl.modules.jigsaw import extract_tiles, hamming_permutation_set, normalize_tiles, shuffle_tiles
from lightning_ssl.optim import WarmupCosineLR


class Jigsaw(SSLMethod):
    """Jigsaw: classify which permutation of a fixed set shuffled the 3 x 3 tiles of an image.

    Args:
        backbone: The encoder f: images (B, C, H, W) -> features (B, D), the representation kept for downstream
            use (``embed``). A project backbone (``SmallCNN``, ``ResNet``, ``ViT``, ``TimmBackbone``, ...) or any
            ``nn.Module`` given by ``class_path``. It encodes each tile on its own (shared weights).
        num_permutations: Size of the permutation set, chosen by maximal Hamming distance (100 in the paper's main
            results).
        permutation_seed: Seed of the permutation set's generation; stored in the model.
        grid: Tiles per side (3 in the paper).
        tile_size: Tile side in pixels; None: 6/7 of a cell (the paper's 64 px tiles in 75 px cells); the rest of
            the cell is the gap and the range of the random offset.
        normalize_tiles: Standardize every tile on its own (the paper's defence against low-level shortcuts).
        head_hidden_dim: Hidden width of the classifier on the concatenated tile features (fc7: 4096 in the
            paper).
        optimizer: Factory called with the parameter groups (no weight decay on biases and norm parameters);
            from a config, the ``class_path`` / ``init_args`` of any ``torch.optim`` optimizer. Default AdamW.
        scheduler: Factory called with the optimizer, stepped every optimizer step. Default ``WarmupCosineLR``
            (linear warm-up, then cosine over ``trainer.estimated_stepping_batches``); None: a constant LR.
    """

    permutations: Tensor  # (P, N) the permutation set (a buffer)

    def __init__(
        self,
        backbone: Backbone,
        num_permutations: int = 100,
        permutation_seed: int = 0,
        grid: int = 3,
        tile_size: int | None = None,
        normalize_tiles: bool = True,
        head_hidden_dim: int = 1024,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        super().__init__(backbone, optimizer, scheduler)
        self.save_hyperparameters()
        if grid < 2:
            raise ValueError(f"grid must be >= 2, got {grid}")
        self.grid, self.tile_size, self.normalize = grid, tile_size, normalize_tiles
        self.register_buffer("permutations", hamming_permutation_set(num_permutations, grid * grid, permutation_seed))
        in_dim = grid * grid * self.num_features  # the concatenated tile features
        self.classifier = ProjectionHead(in_dim, head_hidden_dim, num_permutations, num_layers=2)

    def tiles(self, x: Tensor, jitter: bool) -> Tensor:
        """Images (B, C, H, W) -> tiles (B, grid^2, C, t, t) in row-major order."""
        cell = x.shape[-1] // self.grid
        t = self.tile_size or max(1, round(cell * 6 / 7))
        tiles = extract_tiles(x, self.grid, t, jitter=jitter)
        return normalize_tiles(tiles) if self.normalize else tiles

    def encode_tiles(self, tiles: Tensor) -> Tensor:
        """Tiles (B, N, C, t, t) -> features (B, N, D): one batch of B*N tiles through the shared encoder."""
        b, n = tiles.shape[:2]
        return self.backbone(tiles.flatten(0, 1)).view(b, n, -1)

    def embed(self, x: Tensor) -> Tensor:
        """Mean tile feature (B, D) over the grid's centred tiles."""
        return self.encode_tiles(self.tiles(x, jitter=False)).mean(1)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        views, _ = batch
        x = views[0]
        tiles = self.tiles(x, jitter=True)  # (B, 9, C, t, t)
        target = torch.randint(len(self.permutations), (len(x),), device=x.device)  # (B,) permutation index
        shuffled = shuffle_tiles(tiles, self.permutations[target])  # position i holds tile perm[i]
        h = self.encode_tiles(shuffled)  # (B, 9, D)
        logits = self.classifier(h.flatten(1))  # the concatenation keeps the order the classifier must decode
        loss = F.cross_entropy(logits.float(), target)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/jigsaw_acc", (logits.argmax(1) == target).float().mean())
        return {"loss": loss, "features": h.mean(1).detach()}  # = embed's kind of feature: the mean ignores order
