"""Dense (semantic segmentation) linear probe: a 1x1 convolution on the frozen patch tokens / feature map of a
backbone, its logits upsampled (bilinear) to pixel resolution and trained with per-pixel cross-entropy; reported
as mIoU and pixel accuracy (torchmetrics). This is the linear segmentation evaluation of DINOv2 (Oquab et al.,
2024) and DINOv3 (Simeoni et al., 2025), which tells whether the features keep *where* things are.

    probe = train_dense_probe(train_maps, train_masks, num_classes=11)   # maps (N, D, h, w), masks (N, H, W)
    dense_probe(train_maps, train_masks, test_maps, test_masks, 11)      # {"miou", "pixel_accuracy", "iou"}
    lightning-ssl-eval dense --config configs/eval/fashion_mnist.yaml    # canvases of Fashion-MNIST items

Data: ``lightning_ssl.data.segmentation`` - canvases built from any labelled image datamodule (a classification
``--data`` is turned into one), or a folder of image/mask pairs (``MaskFolderDataModule``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from lightning_ssl.data.segmentation import IGNORE_INDEX
from lightning_ssl.eval.probe_training import channel_stats, fit_probe


class DenseProbe(nn.Module):
    """Per-channel standardization, a 1x1 convolution to class logits, bilinear upsampling to the mask size.

    Args:
        dim: feature channels D.
        num_classes: classes (background included).
        mean: (D,) per-channel feature mean used to standardize (default 0).
        std: (D,) per-channel feature std (default 1).
    """

    mean: Tensor  # (D,) buffers: the feature standardization
    std: Tensor

    def __init__(self, dim: int, num_classes: int, mean: Tensor | None = None, std: Tensor | None = None) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.register_buffer("mean", torch.zeros(dim) if mean is None else mean.float().clone())
        self.register_buffer("std", torch.ones(dim) if std is None else std.float().clone())
        self.head = nn.Conv2d(dim, num_classes, kernel_size=1)
        self.size: tuple[int, int] | None = None  # the masks' (H, W), set by training

    def forward(self, maps: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Feature maps (B, D, h, w) -> logits (B, num_classes, H, W) at ``size`` (default: the training masks')."""
        x = (maps.float() - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)
        logits = self.head(x)
        size = size or self.size
        return logits if size is None else F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _check_masks(masks: Tensor, num_classes: int, ignore_index: int) -> None:
    valid = masks[masks != ignore_index]
    if valid.numel() and (valid.min() < 0 or valid.max() >= num_classes):
        raise ValueError(
            f"mask values must lie in [0, {num_classes}) or be {ignore_index} (ignored), got [{int(valid.min())}, "
            f"{int(valid.max())}]: set num_classes to cover every class index in the masks"
        )


def train_dense_probe(
    maps: Tensor,
    masks: Tensor,
    num_classes: int,
    epochs: int = 20,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    ignore_index: int = IGNORE_INDEX,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> DenseProbe:
    """Fit a ``DenseProbe`` with per-pixel cross-entropy at the masks' resolution.

    Args:
        maps: (N, D, h, w) frozen feature maps, any float dtype.
        masks: (N, H, W) class indices; ``ignore_index`` pixels do not count.
        num_classes: classes, background included.
        epochs: passes over the training images.
        lr: AdamW's peak learning rate (cosine decay to 0).
        weight_decay: AdamW's weight decay.
        batch_size: images per step.
        ignore_index: mask value to ignore (255, as in Pascal VOC / ADE20k tooling).
        seed: initialization and batch order.
        device: where the probe trains.
        progress: show a progress bar.

    Returns:
        The trained probe (eval mode); its ``size`` is the masks' (H, W).
    """
    if maps.ndim != 4 or masks.ndim != 3 or len(maps) != len(masks):
        raise ValueError(f"need maps (N, D, h, w) and masks (N, H, W), got {tuple(maps.shape)}, {tuple(masks.shape)}")
    _check_masks(masks, num_classes, ignore_index)
    mean, std = channel_stats(maps)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = DenseProbe(maps.shape[1], num_classes, mean, std)
    probe.size = (masks.shape[1], masks.shape[2])

    def loss(logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits, target, ignore_index=ignore_index)

    return fit_probe(probe, maps, masks, loss, epochs, lr, weight_decay, batch_size, seed, device, progress, "dense")


@torch.no_grad()
def segmentation_scores(
    probe: nn.Module,
    maps: Tensor,
    masks: Tensor,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """mIoU (intersection / union per class over all pixels, averaged over the classes that occur in the masks
    or the predictions: torchmetrics ``MulticlassJaccardIndex``), pixel accuracy and the per-class IoU (0 for a
    class that occurs in neither), all in [0, 1], of ``probe`` on (N, D, h, w) maps against (N, H, W) masks."""
    _check_masks(masks, num_classes, ignore_index)
    miou = MulticlassJaccardIndex(num_classes, average="macro", ignore_index=ignore_index).to(device)
    iou = MulticlassJaccardIndex(num_classes, average="none", ignore_index=ignore_index).to(device)
    acc = MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index).to(device)
    for m, t in zip(maps.split(256), masks.split(256), strict=True):
        pred = probe(m.to(device), tuple(t.shape[-2:])).argmax(1)
        t = t.to(device).long()
        for metric in (miou, iou, acc):
            metric.update(pred, t)
    return {"miou": miou.compute().item(), "pixel_accuracy": acc.compute().item(), "iou": iou.compute().tolist()}


def dense_probe(
    train_maps: Tensor,
    train_masks: Tensor,
    test_maps: Tensor,
    test_masks: Tensor,
    num_classes: int,
    device: str | torch.device = "cpu",
    **kwargs: Any,
) -> dict[str, Any]:
    """Train on the training maps and masks, return ``segmentation_scores`` on the test ones
    (``train_dense_probe``'s keyword arguments pass through)."""
    probe = train_dense_probe(train_maps, train_masks, num_classes, device=device, **kwargs)
    ignore = kwargs.get("ignore_index", IGNORE_INDEX)
    return segmentation_scores(probe, test_maps, test_masks, num_classes, ignore, device)


@dataclass
class DenseOptions:
    """``lightning-ssl-eval dense`` options (``--dense.<name>``); the canvas options apply when ``--data`` is a
    classification datamodule, whose items are placed on canvases (``CanvasSegmentationDataModule``).

    Args:
        epochs: passes over the training images.
        lr: AdamW's peak learning rate.
        weight_decay: AdamW's weight decay.
        batch_size: images per step.
        canvas_size: canvas side in pixels (default 64/28 of the item side).
        train_size: training canvases.
        test_size: evaluation canvases.
        min_items: fewest items per canvas.
        max_items: most items per canvas.
    """

    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    canvas_size: int | None = None
    train_size: int = 5000
    test_size: int = 1000
    min_items: int = 2
    max_items: int = 4


def segmentation_data(dm: Any, options: DenseOptions) -> Any:
    """``dm`` if it gives masks, canvases of its items if it is a labelled image datamodule, else an error."""
    from lightning_ssl.data.datamodules import ImageDataModule
    from lightning_ssl.data.segmentation import CanvasSegmentationDataModule

    if getattr(dm, "segmentation", False):
        return dm
    if isinstance(dm, ImageDataModule) and dm.labelled and dm.num_classes:
        o = options
        return CanvasSegmentationDataModule(
            dm, o.canvas_size, o.train_size, o.test_size, o.min_items, o.max_items, batch_size=min(dm.batch_size, 128)
        )
    raise ValueError(
        f"the dense probe needs per-pixel labels: {type(dm).__name__} has none. Use a labelled image datamodule "
        f"(its items are placed on canvases), CanvasSegmentationDataModule or MaskFolderDataModule"
    )


def run(
    backbone: nn.Module, dm: Any, options: DenseOptions, device: torch.device, precision: str, cache: Path | None
) -> tuple[dict[str, Any], list[str], dict[str, float]]:
    """The ``dense`` protocol: feature maps of the segmentation set (cached as ``<cache>-dense-<options>.pt``), a
    linear 1x1 head trained to its masks, mIoU and pixel accuracy. Returns (results section, report lines,
    metrics to log)."""
    from lightning_ssl.eval.attentive import load_or_extract, options_key

    seg = segmentation_data(dm, options)
    seg.prepare_data()
    test_loader, train_loader = seg.test_dataloader()
    canvas = {k: v for k, v in asdict(options).items() if k not in ("epochs", "lr", "weight_decay", "batch_size")}
    path = None
    if cache is not None:
        path = cache.with_name(f"{cache.name}-dense-{options_key(DenseOptions(**canvas))}.pt")
    test_f, test_y, train_f, train_y = load_or_extract(
        backbone, [(test_loader, None), (train_loader, None)], device, precision, path
    )
    num_classes = int(seg.num_classes)
    train_kw = {k: getattr(options, k) for k in ("epochs", "lr", "weight_decay", "batch_size")}
    scores = dense_probe(
        train_f, train_y, test_f, test_y, num_classes, device, ignore_index=seg.ignore_index, progress=True, **train_kw
    )
    d, h, w = train_f.shape[1:]
    names = getattr(seg, "class_names", None) or [str(i) for i in range(num_classes)]
    section = {
        **scores,
        "class_names": names,
        "feature_map": [d, h, w],
        "image_size": list(test_y.shape[-2:]),
        "train_size": len(train_y),
        "test_size": len(test_y),
        "data": type(seg).__name__,
        "options": asdict(options),
    }
    lines = [
        "",
        f"Dense linear probe ({type(seg).__name__}, {len(train_y)} training / {len(test_y)} test images of "
        f"{test_y.shape[-2]}x{test_y.shape[-1]} px, {d}-channel {h}x{w} feature maps, {options.epochs} epochs): "
        f"mIoU {100 * scores['miou']:.2f}%, pixel accuracy {100 * scores['pixel_accuracy']:.2f}%",
        "",
        "| class | IoU |",
        "|---|---|",
        *[f"| {n} | {100 * v:.2f}% |" for n, v in zip(names, scores["iou"], strict=True)],
    ]
    metrics = {"eval/dense_miou": scores["miou"], "eval/dense_pixel_accuracy": scores["pixel_accuracy"]}
    return section, lines, metrics
