"""Pictures of a run: the augmented views, MAE reconstructions, DINO's CLS attention maps, a visual tokenizer's
reconstructions and token maps, embedding plots.

The model pictures keep a fixed set of images (the first validation batch, or until one has been seen, the first
view of the first training batch), render a grid every ``every_n_epochs`` training epochs and after the last step
on global rank 0, label it (``label_grid``: tiles enlarged to >= 96 px, a title with the epoch and step, column
and row labels), save it as a PNG under ``out_dir`` (default ``<run directory>/images``) and log it to W&B when
a ``WandbLogger`` is attached, at the step and epoch Lightning logs the metrics of that moment under. The rendering
functions work on their own, e.g. in a notebook.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import make_grid, save_image

from lightning_ssl.runs import log_dir, logged_epoch, logged_step

# a few control points of the "viridis" colormap (dark blue -> green -> yellow), interpolated linearly
_VIRIDIS = torch.tensor(
    [[0.267, 0.005, 0.329], [0.231, 0.322, 0.545], [0.129, 0.565, 0.553], [0.369, 0.788, 0.384], [0.993, 0.906, 0.144]]
)


def to_unit_range(x: Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> Tensor:
    """Normalized images (B, C, H, W) -> [0, 1]: undo ``(x - mean) / std`` when given, else min-max per image."""
    x = x.detach().float().cpu()
    if mean is not None and std is not None:
        m, s = (torch.tensor(list(v)).view(1, -1, 1, 1) for v in (mean, std))
        return (x * s + m).clamp(0, 1)
    lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp(min=1e-8)


def colorize(maps: Tensor) -> Tensor:
    """Maps in [0, 1] (B, H, W) -> RGB (B, 3, H, W) with a viridis-like colormap."""
    pos = maps.clamp(0, 1) * (len(_VIRIDIS) - 1)
    lo = pos.floor().long().clamp(max=len(_VIRIDIS) - 2)
    frac = (pos - lo).unsqueeze(-1)
    rgb = _VIRIDIS[lo] * (1 - frac) + _VIRIDIS[lo + 1] * frac  # (B, H, W, 3)
    return rgb.permute(0, 3, 1, 2)


def keep_mass(attn: Tensor, threshold: float) -> Tensor:
    """DINO's thresholded maps (``visualize_attention.py``): 1 on the smallest set of patches holding
    ``threshold`` of each map's attention mass, 0 elsewhere. attn (..., h, w)."""
    flat = attn.flatten(-2)
    values, idx = flat.sort(dim=-1)  # ascending, as in the reference
    cum = (values / values.sum(-1, keepdim=True)).cumsum(-1)
    keep = torch.zeros_like(flat).scatter(-1, idx, (cum > 1 - threshold).to(flat.dtype))
    return keep.view_as(attn)


def render_attention(images: Tensor, attn: Tensor, threshold: float | None = None, alpha: float = 0.6) -> Tensor:
    """One row per image: the image, then the mean over heads and each head's CLS attention map, upsampled to
    the image (nearest: one block per patch, as in DINO's figures) and blended over it.

    Args:
        images: (B, C, H, W) in [0, 1] (see ``to_unit_range``).
        attn: (B, heads, h, w) CLS -> patch attention (``ViT.last_attention``).
        threshold: show DINO's binarized maps keeping this fraction of the attention mass (e.g. 0.6).
    Returns: a grid image (3, rows * H', columns * W') in [0, 1].
    """
    b, _, hh, ww = images.shape
    attn = attn.detach().float().cpu()
    maps = torch.cat([attn.mean(1, keepdim=True), attn], dim=1)  # (B, 1 + heads, h, w)
    maps = keep_mass(maps, threshold) if threshold is not None else maps
    maps = F.interpolate(maps, size=(hh, ww), mode="nearest")
    lo, hi = maps.amin(dim=(2, 3), keepdim=True), maps.amax(dim=(2, 3), keepdim=True)
    maps = (maps - lo) / (hi - lo).clamp(min=1e-8)
    rgb = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:, :3]
    heat = colorize(maps.flatten(0, 1)).view(b, -1, 3, hh, ww)
    overlay = (1 - alpha) * rgb.unsqueeze(1) + alpha * heat  # (B, 1 + heads, 3, H, W)
    tiles = torch.cat([rgb.unsqueeze(1), overlay], dim=1).flatten(0, 1)
    return make_grid(tiles, nrow=maps.shape[1] + 1, padding=1, pad_value=1.0)


def render_reconstructions(original: Tensor, masked: Tensor, reconstruction: Tensor) -> Tensor:
    """One row per image: original | masked | reconstruction, all (B, C, H, W) in [0, 1] -> grid (3, H', W')."""
    tiles = torch.stack([original, masked, reconstruction], dim=1).flatten(0, 1)
    if tiles.shape[1] == 1:
        tiles = tiles.expand(-1, 3, -1, -1)
    return make_grid(tiles.clamp(0, 1), nrow=3, padding=1, pad_value=1.0)


def token_colours(ids: Tensor, num_codes: int) -> Tensor:
    """Token ids (B, h, w) -> RGB (B, 3, h, w): one fixed random colour per code (the same in every epoch)."""
    palette = torch.rand(num_codes, 3, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.2
    return palette[ids.long().cpu()].permute(0, 3, 1, 2)


def render_tokens(original: Tensor, tokens: Tensor, num_codes: int, reconstruction: Tensor | None = None) -> Tensor:
    """One row per image: original | reconstruction (when there is one) | token map, upsampled to the image
    (nearest: one block per patch). Images (B, C, H, W) in [0, 1], tokens (B, h, w) -> grid (3, H', W')."""
    _b, _, hh, ww = original.shape
    colours = F.interpolate(token_colours(tokens, num_codes), size=(hh, ww), mode="nearest")
    shown = [t for t in (original, reconstruction) if t is not None]
    rgb = [t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t[:, :3] for t in shown]
    tiles = torch.stack([*rgb, colours], dim=1).flatten(0, 1)
    return make_grid(tiles.clamp(0, 1), nrow=len(rgb) + 1, padding=1, pad_value=1.0)


def label_grid(
    grid: Tensor, columns: Sequence[str], title: str, rows: Sequence[str] | None = None, min_tile: int = 96
) -> Tensor:
    """A picture grid made readable: enlarged (nearest neighbour, so pixels stay pixels) until each tile is at least
    ``min_tile`` px wide, with a title, each column's label above it and each row's on the left (matplotlib; without
    it, enlarged only).

    Args:
        grid: (3, H, W) in [0, 1], ``len(columns)`` tiles wide with 1-px padding (``make_grid(..., padding=1)``).
        columns: one label per column of tiles.
        title: the line above the picture.
        rows: one label per row of tiles (e.g. the class of each image), or None.
        min_tile: the smallest tile width in pixels.

    Returns:
        (3, H', W') in [0, 1].
    """
    tile = max(1, (grid.shape[-1] - 1) // max(1, len(columns)) - 1)
    scale = max(1, -(-min_tile // tile))
    big = grid.float().cpu().repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return big
    h, w = big.shape[1:]
    dpi, top, left = 100, 70, 110 if rows else 10  # margins in pixels: title + column labels, row labels
    width = max(w + left + 10, 480)
    fig = Figure(figsize=(width / dpi, (h + top + 10) / dpi), dpi=dpi)
    ax = fig.add_axes((left / width, 10 / (h + top + 10), w / width, h / (h + top + 10)))
    ax.imshow(big.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
    ax.set_xticks([(i + 0.5) * w / len(columns) for i in range(len(columns))], list(columns), fontsize=9)
    ax.xaxis.tick_top()
    ax.set_yticks([(i + 0.5) * h / len(rows) for i in range(len(rows))] if rows else [], list(rows or []), fontsize=8)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    fig.suptitle(title, fontsize=10, y=1 - 8 / (h + top + 10), va="top")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = torch.from_numpy(np.asarray(canvas.buffer_rgba())[..., :3].copy())
    return rgb.permute(2, 0, 1).float() / 255


def log_picture(trainer: L.Trainer, key: str, image: str | Path, caption: str) -> None:
    """Log a saved picture to every W&B logger at Lightning's step and epoch (``runs.logged_step`` /
    ``logged_epoch``), so it lines up with the metrics of the same moment."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            metrics: dict[str, Any] = {key: [wandb.Image(str(image), caption=caption)], "epoch": logged_epoch(trainer)}
            logger.log_metrics(metrics, step=logged_step(trainer))


def publish(
    trainer: L.Trainer,
    grid: Tensor,
    name: str,
    out_dir: str | Path | None,
    caption: str,
    columns: Sequence[str] | None = None,
    rows: Sequence[str] | None = None,
) -> Path:
    """Label ``grid`` (3, H, W) (``label_grid``: the caption, the epoch and step, the ``columns`` and ``rows``), save
    it as ``<out_dir>/<name>_epoch<NNN>.png`` and log it to every W&B logger as ``images/<name>``."""
    root = Path(out_dir) if out_dir is not None else log_dir(trainer) / "images"
    root.mkdir(parents=True, exist_ok=True)
    epoch, step = logged_epoch(trainer), logged_step(trainer)
    title = f"{caption} - epoch {epoch}, step {step}"
    path = root / f"{name}_epoch{epoch:03d}.png"
    save_image(label_grid(grid, columns, title, rows) if columns else grid, path)
    log_picture(trainer, f"images/{name}", path, title)
    return path


def row_labels(trainer: L.Trainer, labels: Tensor | None) -> list[str] | None:
    """The class name (or number) of each image, for a picture's rows; None without labels."""
    if labels is None or labels.ndim != 1 or (labels < 0).any():
        return None
    names = getattr(getattr(trainer, "datamodule", None), "class_names", None)
    return [str(names[i]) if names is not None and i < len(names) else f"class {i}" for i in labels.tolist()]


def _labels(batch: Any, n: int) -> Tensor | None:
    labels = batch[1] if isinstance(batch, (list, tuple)) and len(batch) > 1 else None
    return labels[:n].detach().cpu() if isinstance(labels, Tensor) and labels.ndim == 1 else None


class _ImageCallback(L.Callback):
    """Base of the picture callbacks: a fixed set of images rendered every few epochs, saved and logged.

    Args:
        num_images: Images in the grid, >= 1.
        every_n_epochs: Render every this many training epochs; 0: off.
        out_dir: Folder of the PNGs; None: ``<log dir>/images``.
    """

    name = "images"

    def __init__(self, num_images: int = 8, every_n_epochs: int = 1, out_dir: str | None = None) -> None:
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        self.num_images, self.every_n_epochs, self.out_dir = num_images, every_n_epochs, out_dir
        self._val: Tensor | None = None
        self._train: Tensor | None = None
        self._labels: Tensor | None = None  # of the kept images, when the batch has them
        self.last_path: Path | None = None
        self._rendered_at: int | None = None  # global step of the last picture

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._val is None and dataloader_idx == 0 and isinstance(batch, (list, tuple)):
            self._val = batch[0][: self.num_images].detach().cpu()
            self._labels = _labels(batch, self.num_images)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._train is None and self._val is None:
            x = batch[0][0] if isinstance(batch[0], (list, tuple)) else batch[0]
            self._train = x[: self.num_images].detach().cpu()
            self._labels = _labels(batch, self.num_images)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.every_n_epochs > 0 and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._publish(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        """The final model always gets its picture, whatever the interval."""
        if self.every_n_epochs > 0 and self._rendered_at != trainer.global_step:
            self._publish(trainer, pl_module)

    def _publish(self, trainer, pl_module) -> None:
        images = self._val if self._val is not None else self._train
        if images is None or not trainer.is_global_zero:
            return
        self._rendered_at = trainer.global_step
        was_training = pl_module.training
        pl_module.eval()
        try:
            grid, columns, caption = self.render(pl_module, images.to(pl_module.device), trainer)
        finally:
            pl_module.train(was_training)
        rows = row_labels(trainer, self._labels)
        self.last_path = publish(trainer, grid, self.name, self.out_dir, caption, columns, rows)

    def render(self, pl_module, images: Tensor, trainer) -> tuple[Tensor, list[str], str]:
        """(grid (3, H, W) in [0, 1] with one row per image, the columns' labels, a caption)."""
        raise NotImplementedError

    @staticmethod
    def _norm_stats(trainer) -> tuple[Any, Any]:
        dm = trainer.datamodule
        return dm.norm_stats() if hasattr(dm, "norm_stats") else (None, None)


class MAEReconstructionLogger(_ImageCallback):
    """Grid of original | masked | reconstruction (visible patches pasted back) for an MAE model, with a fixed
    masking seed so epochs compare.

    Args:
        num_images: Images in the grid, >= 1.
        every_n_epochs: Render every this many training epochs; 0: off.
        out_dir: Folder of the PNGs; None: ``<log dir>/images``.
        seed: Seed of the masks drawn for the pictures (the same every epoch).
    """

    name = "mae_reconstruction"

    def __init__(self, num_images: int = 8, every_n_epochs: int = 1, out_dir: str | None = None, seed: int = 0) -> None:
        super().__init__(num_images, every_n_epochs, out_dir)
        self.seed = seed

    def render(self, pl_module, images, trainer):
        masked, recon = pl_module.reconstruct(images, torch.Generator().manual_seed(self.seed))
        mean, std = self._norm_stats(trainer)
        grid = render_reconstructions(*(to_unit_range(t, mean, std) for t in (images, masked, recon)))
        return grid, ["original", f"masked ({pl_module.mask_ratio:.0%})", "reconstruction"], "MAE reconstructions"


class AttentionMapLogger(_ImageCallback):
    """Grid of DINO's CLS attention maps of the last block (teacher ViT): image | mean over heads | each head.
    ``threshold`` (e.g. 0.6) shows the binarized maps of the paper's figures instead.

    Args:
        num_images: Images in the grid, >= 1.
        every_n_epochs: Render every this many training epochs; 0: off.
        out_dir: Folder of the PNGs; None: ``<log dir>/images``.
        threshold: Keep the smallest set of patches holding this fraction of the attention mass (0.6 in the
            paper's figures); None: the continuous maps.
    """

    name = "attention_maps"

    def __init__(
        self, num_images: int = 8, every_n_epochs: int = 1, out_dir: str | None = None, threshold: float | None = None
    ) -> None:
        super().__init__(num_images, every_n_epochs, out_dir)
        self.threshold = threshold

    def render(self, pl_module, images, trainer):
        attn = pl_module.attention_maps(images)
        mean, std = self._norm_stats(trainer)
        grid = render_attention(to_unit_range(images, mean, std), attn, self.threshold)
        heads = [f"head {i + 1}" for i in range(attn.shape[1])]
        kept = f", {self.threshold:.0%} of the mass" if self.threshold is not None else ""
        return grid, ["image", "mean", *heads], f"CLS attention of the last block{kept}"


class ViewGrid(L.Callback):
    """The augmented views of the first training batch, once, at the start of training: one row per image, one
    column per view (multi-crop's small crops shown at the size of the large ones), so a run's augmentations can be
    checked by eye. Saved as ``images/views_epoch000.png`` in the run directory and logged to W&B.

    Args:
        num_images: Images (rows) shown.
        enabled: Draw the grid (True) or not.
        out_dir: Folder of the PNG; None: ``<log dir>/images``.
    """

    name = "views"

    def __init__(self, num_images: int = 8, enabled: bool = True, out_dir: str | None = None) -> None:
        self.num_images, self.enabled, self.out_dir = num_images, enabled, out_dir
        self.last_path: Path | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.enabled or self.last_path is not None or not trainer.is_global_zero:
            return
        views = batch[0] if isinstance(batch, (list, tuple)) else None
        if not isinstance(views, (list, tuple)) or not all(isinstance(v, Tensor) and v.ndim == 4 for v in views):
            self.enabled = False  # not an image batch of views (text, image-text pairs)
            return
        dm = trainer.datamodule
        mean, std = dm.norm_stats() if hasattr(dm, "norm_stats") else (None, None)
        size = max(v.shape[-1] for v in views)
        tiles = [
            to_unit_range(F.interpolate(v[: self.num_images].float(), size=(size, size), mode="nearest"), mean, std)
            for v in views
        ]
        grid = torch.stack(tiles, dim=1).flatten(0, 1)  # image-major: each row is one image's views
        if grid.shape[1] == 1:
            grid = grid.expand(-1, 3, -1, -1)
        grid = make_grid(grid[:, :3], nrow=len(views), padding=1, pad_value=1.0)
        shown = min(self.num_images, len(views[0]))
        sizes = [f"view {i + 1} ({v.shape[-1]} px)" for i, v in enumerate(views)]
        self.last_path = publish(
            trainer,
            grid,
            self.name,
            self.out_dir,
            f"{len(views)} augmented views of {shown} images",
            sizes,
            row_labels(trainer, _labels(batch, shown)),
        )


class EmbeddingPlot(L.Callback):
    """A t-SNE (or UMAP) of the validation features ``embed`` gives (val dataloader 0, the first ``max_points``),
    coloured by class, every ``every_n_epochs`` epochs and after the last step; ``images/embeddings_epoch<N>.png``
    in the run directory and ``images/embeddings`` in W&B. ``every_n_epochs=0`` (default) turns it off (t-SNE of
    1,000 points takes a few seconds); ``configs/shared/wandb.yaml`` turns it on.

    Args:
        every_n_epochs: Draw every this many epochs (and after the last step); 0: off.
        method: ``"tsne"`` or ``"umap"`` (UMAP needs ``umap-learn``).
        max_points: Most validation images plotted.
        out_dir: Folder of the PNGs; None: ``<log dir>/images``.
    """

    name = "embeddings"

    def __init__(
        self, every_n_epochs: int = 0, method: str = "tsne", max_points: int = 1000, out_dir: str | None = None
    ) -> None:
        if method not in ("tsne", "umap"):
            raise ValueError(f"method must be 'tsne' or 'umap', got {method!r}")
        self.every_n_epochs, self.method, self.max_points, self.out_dir = every_n_epochs, method, max_points, out_dir
        self._store: list[tuple[Tensor, Tensor]] = []
        self.last_path: Path | None = None

    def _active(self, trainer) -> bool:
        from lightning_ssl.callbacks.end_of_fit import validation_due

        return trainer.is_global_zero and validation_due(trainer, self.every_n_epochs)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._store = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if (
            dataloader_idx == 0
            and self._active(trainer)
            and isinstance(outputs, dict)
            and "features" in outputs
            and sum(len(f) for f, _ in self._store) < self.max_points
        ):
            self._store.append((outputs["features"].detach().float().cpu(), outputs["labels"].detach().cpu()))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self._store or not self._active(trainer):
            return
        from lightning_ssl.metrics.plots import embedding_plot

        features, labels = (torch.cat(t)[: self.max_points] for t in zip(*self._store, strict=True))
        self._store = []
        root = Path(self.out_dir) if self.out_dir is not None else log_dir(trainer) / "images"
        names = getattr(trainer.datamodule, "class_names", None) if trainer.datamodule is not None else None
        self.last_path = embedding_plot(
            features,
            labels,
            root / f"{self.name}_epoch{logged_epoch(trainer):03d}.png",
            self.method,
            self.max_points,
            class_names=names,
            title=f"{self.method.upper()} of {len(features)} validation embeddings, "
            f"epoch {logged_epoch(trainer)}, step {logged_step(trainer)}",
        )
        log_picture(
            trainer, f"images/{self.name}", self.last_path, f"{self.method.upper()}, epoch {logged_epoch(trainer)}"
        )


class TokenizerReconstructionLogger(_ImageCallback):
    """Grid of original | reconstruction | token ids (one colour per code) for a ``VisualTokenizer``; a VQ-KD
    tokenizer reconstructs teacher features, not pixels, and shows original | token ids."""

    name = "tokenizer"

    def render(self, pl_module, images, trainer):
        rec, tokens = pl_module.reconstruct(images)
        mean, std = self._norm_stats(trainer)
        grid = render_tokens(
            to_unit_range(images, mean, std),
            tokens,
            pl_module.num_codes,
            None if rec is None else to_unit_range(rec, mean, std),
        )
        columns = ["original", "reconstruction", "tokens"] if rec is not None else ["original", "tokens"]
        return grid, columns, f"visual tokens ({pl_module.num_codes} codes)"
