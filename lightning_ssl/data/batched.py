"""Batched random resized crops on the device, for images of any original size.

The batched path (``batch_augment: true``) splits the work in two. Dataloader workers only decode each file
and resize it to a fixed ``decode_size`` square as uint8 (``datasets.decode_resized``), remembering the file's
own height and width; after the batch is on the device, every view of every image gets its own crop box and is
resampled there (``BatchedResizedCrop``), followed by kornia's flips, colour jitter, grayscale, blur and
solarization, each with per-sample random parameters.

**How the crop stays the paper's.** ``RandomResizedCrop`` (Szegedy et al., 2015; SimCLR, BYOL, MoCo, DINO) draws
a crop whose area is a uniform fraction ``scale`` of the *original* image and whose aspect ratio is
log-uniform in ``ratio``, with rejection when it does not fit. Squashing a 500x375 photo to 256x256 would
change both distributions if the crop were drawn on the square (a 4:3 crop of the square is a 16:9 crop of the
photo). So the box is drawn with torchvision's algorithm (``sample_crop_boxes``: ten tries, then the central
fallback) in the original's pixel coordinates, from the height and width the worker recorded, and mapped into
the square: ``x' = x * S / W``, ``y' = y * S / H``. The squash is an affine map, so the mapped box covers
exactly the same part of the picture, and resizing it to the view's size undoes the squash. Scale and aspect
ratio are therefore exactly torchvision's with respect to the original (``tests/test_batched.py`` compares
the quantiles over many draws). We chose this over the usual alternatives because they change what is
cropped: resizing the shorter side and center-cropping loses the borders (25% of a 4:3 image, so crops of
large scale are impossible and the scale distribution shrinks), and padding to a square wastes pixels and
memory for nothing.

**What the intermediate resize costs.** Only resolution: the crop is resampled from ``S x S`` pixels instead
of the original's, i.e. along each axis the picture keeps ``min(1, S / side)`` of its detail. With the default
``S = 256`` for 224 px views and ImageNet-sized photos (~500x375) that is 0.51 horizontally and 0.68
vertically, which matters only for crops smaller than the view (scale < ~0.2, upsampled anyway). The test
bounds the pixel difference against torchvision's ``resized_crop`` of the original on the same box; raise
``decode_size`` (e.g. 320 or 384) to trade memory and transfer for detail. Very elongated images (panoramas)
lose the most along their long side.

Resampling uses ``torchvision.ops.roi_align`` (one batched call for all boxes; bilinear at pixel centres, and
with an adaptive number of samples per output pixel, it averages when shrinking, like an antialiased resize).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def sample_crop_boxes(
    sizes: Tensor,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    attempts: int = 10,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random resized crop boxes, one per row of ``sizes`` ((B, 2): height, width of each *original* image),
    drawn exactly as ``torchvision.transforms.v2.RandomResizedCrop`` draws them for one image: area fraction
    uniform in ``scale``, log aspect ratio uniform in ``log(ratio)``, sides rounded, up to ``attempts`` tries
    until the box fits, else the central crop of the largest allowed aspect ratio. Returns (B, 4) float boxes
    ``(top, left, height, width)`` in whole pixels of the original image. Draws on the CPU (reproducible on
    every device under ``torch.manual_seed``)."""
    sizes = sizes.detach().to("cpu", torch.float64)
    if sizes.ndim != 2 or sizes.shape[1] != 2:
        raise ValueError(f"sizes must be (B, 2) heights and widths, got shape {tuple(sizes.shape)}")
    if (sizes < 1).any():
        raise ValueError("image sizes must be at least 1 x 1")
    b = sizes.shape[0]
    height, width = sizes[:, :1], sizes[:, 1:]  # (B, 1)
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    area = (
        height * width * torch.empty(b, attempts, dtype=torch.float64).uniform_(scale[0], scale[1], generator=generator)
    )
    aspect = torch.exp(torch.empty(b, attempts, dtype=torch.float64).uniform_(lo, hi, generator=generator))
    w = torch.round(torch.sqrt(area * aspect))  # round half to even, as Python's round() in torchvision
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.int8).argmax(1, keepdim=True)  # the first try that fits
    found = fits.any(1)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    height, width = height.squeeze(1), width.squeeze(1)
    u = torch.rand(b, 2, dtype=torch.float64, generator=generator)  # randint(0, n + 1) = floor(u * (n + 1))
    top = torch.floor(u[:, 0] * (height - h + 1))
    left = torch.floor(u[:, 1] * (width - w + 1))
    # the fallback: the whole image, or its central crop of the nearest allowed aspect ratio
    in_ratio = width / height
    fw = torch.where(in_ratio > max(ratio), torch.round(height * max(ratio)), width)
    fh = torch.where(in_ratio < min(ratio), torch.round(width / min(ratio)), height)
    fw, fh = torch.minimum(fw, width), torch.minimum(fh, height)
    ftop, fleft = torch.div(height - fh, 2, rounding_mode="floor"), torch.div(width - fw, 2, rounding_mode="floor")
    boxes = torch.stack(
        [
            torch.where(found, top, ftop),
            torch.where(found, left, fleft),
            torch.where(found, h, fh),
            torch.where(found, w, fw),
        ],
        1,
    )
    return boxes.float()


def crop_and_resize(images: Tensor, boxes: Tensor, size: int | tuple[int, int], sizes: Tensor | None = None) -> Tensor:
    """Crop ``boxes`` ((B, 4) top, left, height, width in pixels of the *original* images, whose (height, width)
    are ``sizes`` (B, 2); default: the images' own size) out of ``images`` (B, C, H, W) float, which hold the
    originals resized to H x W, and resize each to ``size``. One ``roi_align`` call for the whole batch."""
    from torchvision.ops import roi_align

    b, _, hh, ww = images.shape
    out = (size, size) if isinstance(size, int) else tuple(size)
    boxes = boxes.to(images.device, torch.float32)
    if sizes is None:
        sy = sx = torch.ones(b, device=images.device)
    else:
        sizes = sizes.to(images.device, torch.float32)
        sy, sx = hh / sizes[:, 0], ww / sizes[:, 1]
    top, left, h, w = boxes.unbind(1)
    rois = torch.stack(
        [
            torch.arange(b, device=images.device, dtype=torch.float32),
            left * sx,
            top * sy,
            (left + w) * sx,
            (top + h) * sy,
        ],
        1,
    )  # (idx, x1, y1, x2, y2)
    # aligned=True: pixel k covers [k, k + 1), so a box of whole pixels samples exactly those pixels;
    # sampling_ratio=-1: ceil(box side / output side) samples per output pixel, averaged (antialiasing)
    return roi_align(images, rois, out, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


class BatchedResizedCrop(nn.Module):
    """``RandomResizedCrop`` for a batch on the device: each sample its own box, drawn with respect to its
    original size (``sizes`` (B, 2); default: the batch's own height and width), output (B, C, size, size).

    Args:
        size: Side of the output crops in pixels.
        scale: Range of a crop's area as a fraction of the original image's ((0.08, 1.0) in SimCLR / BYOL).
        ratio: Range of a crop's aspect ratio ((3/4, 4/3), torchvision's).
    """

    def __init__(
        self, size: int, scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3)
    ) -> None:
        super().__init__()
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"crop scale must satisfy 0 < min_scale <= max_scale <= 1, got {tuple(scale)}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"crop aspect ratio must satisfy 0 < min <= max, got {tuple(ratio)}")
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)

    def forward(self, images: Tensor, sizes: Tensor | None = None) -> Tensor:
        if sizes is None:
            sizes = torch.tensor([images.shape[-2:]], dtype=torch.float32).expand(len(images), 2)
        boxes = sample_crop_boxes(sizes, self.scale, self.ratio)
        return crop_and_resize(images, boxes, self.size, sizes)

    def extra_repr(self) -> str:
        return f"size={self.size}, scale={self.scale}, ratio={tuple(round(r, 4) for r in self.ratio)}"


def decode_jpeg_batch(
    data: list[Tensor], size: int, channels: int, device: torch.device | str
) -> tuple[Tensor, Tensor]:
    """Decode a batch of encoded images (1-D uint8 CPU tensors of file bytes) on ``device`` (nvJPEG through
    ``torchvision.io.decode_jpeg`` on CUDA; other formats are decoded on the CPU) and resize each to
    ``size x size``. Returns uint8 (B, channels, size, size) on ``device`` and the original sizes (B, 2)."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    mode = ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY
    device = torch.device(device)
    jpeg = [i for i, d in enumerate(data) if len(d) > 2 and int(d[0]) == 0xFF and int(d[1]) == 0xD8]
    decoded: list[Tensor | None] = [None] * len(data)
    if jpeg:
        try:
            for i, img in zip(jpeg, decode_jpeg([data[i] for i in jpeg], mode=mode, device=device), strict=True):
                decoded[i] = img
        except RuntimeError as e:
            raise ValueError(f"cannot decode a JPEG of this batch on {device} (corrupt or truncated?): {e}") from e
    images: list[Tensor] = []
    for i, (d, img) in enumerate(zip(data, decoded, strict=True)):
        if img is None:
            try:
                img = decode_image(d, mode=mode).to(device)
            except RuntimeError as e:
                raise ValueError(f"cannot decode image {i} of this batch (corrupt or truncated?): {e}") from e
        images.append(img)
    sizes = torch.tensor([list(img.shape[-2:]) for img in images], dtype=torch.float32)
    out = torch.empty(len(data), channels, size, size, dtype=torch.uint8, device=device)
    for i, img in enumerate(images):
        x = img.unsqueeze(0).float()
        out[i] = (
            torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            .round_()
            .clamp_(0, 255)
            .to(torch.uint8)[0]
        )
    return out, sizes
