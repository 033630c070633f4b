"""The ImageNet-scale data path, side by side in one run: images per second that one CPU dataloader worker (one
core) turns from JPEG files into what a 224 px training step needs, and the CPU cores each pipeline needs to
feed a GPU at a given step rate. Rates are per second of the process's CPU time, so they hold on a machine
shared with other jobs.

    scripts/with_jemalloc.sh .venv/bin/python benchmarks/data_pipeline.py [--images 3000] [--seconds 8]
                                                                         [--gpu-rate 3000]

Pipelines (SimCLR's two 224 px views of each image, ImageNet recipe: crop scale 0.08-1, flip, colour jitter,
grayscale, blur):
  1. per-image torchvision v2 in the worker: decode the file, then both views (what ``batch_augment: false``
     does with ``ImageFolderDataModule``);
  2. workers decode + resize to 256 px as uint8 (torchvision; Pillow's DCT-scaled decoding for JPEGs twice
     that size), the views batched on the device after transfer (``batch_augment: true``); also with Pillow
     decoding and resizing, the alternative;
  3. the same from litdata chunks (``StreamingImageDataModule``; chunks on the local disk, in the page cache).
For 2 and 3 the batched views run on the GPU in training; here they are also timed on this CPU (2 threads,
batch 64) to show what they cost where there is no GPU. ``--gpu-rate`` is a parameter: the training step rate
to feed, default 3000 images/s (about ResNet-50 on one H100 in bf16; set your own model's). Cores needed =
gpu_rate / (images/s per worker), one worker per core.

The test images are generated once into outputs/bench_jpegs (not the repository): real-size JPEGs
(500x375, 375x500, 500x333, 640x480, 500x500; quality 90) cut from scikit-image's photographs with random
crops, flips, colour and brightness changes and a little noise, so they decode like photographs do.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from lightning_ssl.data import SimCLRViews
from lightning_ssl.data.datasets import FileImageDataset, list_image_folder
from lightning_ssl.precision import describe_machine

SIZES = [(500, 375), (500, 375), (500, 375), (375, 500), (500, 333), (640, 480), (500, 500)]  # (w, h), ImageNet-like


def photographs() -> list[np.ndarray]:
    from skimage import data

    out = []
    for name in (
        "astronaut",
        "chelsea",
        "coffee",
        "hubble_deep_field",
        "immunohistochemistry",
        "retina",
        "rocket",
        "stereo_motorcycle",
        "camera",
        "grass",
        "gravel",
        "brick",
        "moon",
    ):
        try:
            x = getattr(data, name)()
        except Exception:  # some need a download
            continue
        x = x[0] if isinstance(x, tuple) else x
        if x.ndim == 2:  # gray photographs get a random tint later
            x = np.repeat(x[..., None], 3, axis=2)
        out.append(np.ascontiguousarray(x[..., :3]))
    return out


def _write_jpeg(args: tuple[Path, int, int]) -> None:
    from PIL import Image, ImageEnhance

    folder, i, seed = args
    rng = np.random.default_rng((seed, i))
    photos = _PHOTOS
    src = photos[int(rng.integers(len(photos)))]
    h, w = src.shape[:2]
    s = rng.uniform(0.35, 1.0)
    ch, cw = min(h, max(32, int(h * s))), min(w, max(32, int(w * s * rng.uniform(0.75, 1.33))))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    im = Image.fromarray(src[top : top + ch, left : left + cw]).resize(SIZES[i % len(SIZES)], Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    im = ImageEnhance.Color(im).enhance(rng.uniform(0.5, 1.5))
    im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.7, 1.3))
    tint = Image.new("RGB", im.size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    im = Image.blend(im, tint, float(rng.uniform(0.0, 0.15)))  # a colour cast
    noise = Image.effect_noise(im.size, float(rng.uniform(2, 8))).convert("RGB")  # sensor-like grain
    im = Image.blend(im, noise, 0.04)
    d = folder / f"class{i % 10}"
    d.mkdir(parents=True, exist_ok=True)
    im.save(d / f"{i:05d}.jpg", quality=90)


_PHOTOS: list[np.ndarray] = []


def make_jpegs(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` natural-looking JPEGs in 10 class folders, written by all cores (kept if already there)."""
    from multiprocessing import get_context

    if folder.is_dir() and len(list(folder.rglob("*.jpg"))) >= n:
        return folder
    _PHOTOS[:] = photographs()
    with get_context("fork").Pool(os.cpu_count() or 1) as pool:
        pool.map(_write_jpeg, [(folder, i, seed) for i in range(n)], chunksize=32)
    return folder


def rate(fn, n_items: int, seconds: float) -> float:
    """Items per CPU-second of ``fn(i)`` (this process's CPU time: what one dedicated worker core does, also on a
    machine shared with other jobs), run for ``seconds`` of wall time, cycling through ``n_items``."""
    fn(0)
    k, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        fn(k % n_items)
        k += 1
    return k / (time.process_time() - c0)


def per_image_worker(paths, seconds: float, blur_prob: float = 0.5) -> float:
    views = SimCLRViews(blur_prob=blur_prob).build(224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    ds = FileImageDataset(paths, None, views, 3, verify=False)
    return rate(lambda i: ds[(i, i)], len(ds), seconds)


def decode_worker(paths, seconds: float, size: int = 256) -> float:
    ds = FileImageDataset(paths, None, None, 3, verify=False, decode_size=size)
    return rate(lambda i: ds[i], len(ds), seconds)


def pillow_decode_worker(paths, seconds: float, size: int = 256) -> float:
    """The alternative worker: Pillow decodes (with draft) and resizes."""
    from PIL import Image

    def one(i):
        with Image.open(paths[i]) as im:
            im.draft("RGB", (size, size))
            im = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)

    return rate(one, len(paths), seconds)


def streaming_worker(chunks: str, seconds: float, size: int = 256) -> float:
    from lightning_ssl.data import StreamingImageDataModule

    dm = StreamingImageDataModule(
        input_dir=chunks, image_size=224, decode_size=size, batch_augment=True, num_workers=0, views=SimCLRViews()
    )
    dm.setup("fit")
    stream = dm.train_set
    it = iter(stream)
    next(it)
    k, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        try:
            next(it)
        except StopIteration:
            it = iter(stream)
            continue
        k += 1
    return k / (time.process_time() - c0)


def batched_views_cpu(seconds: float, batch: int = 64, size: int = 256) -> float:
    views = SimCLRViews().build_batched(224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    sizes = torch.tensor([[375.0, 500.0]]).expand(batch, 2)
    views(x.float() / 255, sizes)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        views(x.float() / 255, sizes)
        n += batch
    return n / (time.process_time() - c0)  # per CPU-second (both threads counted)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=3000, help="JPEGs to generate (once) into --folder")
    p.add_argument("--folder", default="outputs/bench_jpegs")
    p.add_argument("--seconds", type=float, default=8.0, help="seconds per measurement")
    p.add_argument(
        "--gpu-rate",
        type=float,
        default=3000.0,
        help="training images/s to feed (default 3000: about ResNet-50 on one H100, bf16)",
    )
    a = p.parse_args()
    torch.set_num_threads(1)  # a dataloader worker: one thread
    t0 = time.perf_counter()
    folder = make_jpegs(Path(a.folder) / "train", a.images)
    paths = list_image_folder(folder)[0][: a.images]
    mb = sum(os.path.getsize(q) for q in paths) / len(paths) / 1e3
    print(
        f"{len(paths)} JPEGs in {folder} (mean {mb:.0f} kB), ready after {time.perf_counter() - t0:.0f} s", flush=True
    )
    chunks = Path(a.folder) / "chunks"
    if not (chunks / "index.json").is_file():
        from lightning_ssl.data import optimize_images

        t1 = time.perf_counter()
        optimize_images(str(folder), str(chunks), overwrite=True, verbose=False)
        print(f"optimized into litdata chunks in {time.perf_counter() - t1:.0f} s", flush=True)

    rows = []
    per_image = per_image_worker(paths, a.seconds)
    rows.append(("1. per-image torchvision v2 (decode + 2 views) in the worker", per_image, None))
    print(rows[-1], flush=True)
    no_blur = per_image_worker(paths, a.seconds, blur_prob=0.0)
    rows.append(("   1 without the Gaussian blur (torchvision blurs with a full 23x23 convolution)", no_blur, None))
    print(rows[-1], flush=True)
    dec = decode_worker(paths, a.seconds)
    rows.append(("2. workers decode + resize to 256 px uint8 (torchvision), views batched on the device", dec, None))
    print(rows[-1], flush=True)
    pil = pillow_decode_worker(paths, a.seconds)
    rows.append(("   2 with Pillow decoding and resizing instead (the alternative)", pil, None))
    print(rows[-1], flush=True)
    stream = streaming_worker(str(chunks), a.seconds)
    rows.append(("3. litdata chunks: read + decode + resize, views batched on the device", stream, None))
    print(rows[-1], flush=True)
    torch.set_num_threads(2)
    aug = batched_views_cpu(a.seconds)
    print(("batched views on this CPU", aug), flush=True)

    print(f"\n{describe_machine('fp32 (data pipeline)')}")
    print(
        f"{len(paths)} generated JPEGs (mean {mb:.0f} kB, 500x375-class sizes), 2 SimCLR views of 224 px per image; "
        f"one process, 1 thread per worker; rates per second of the process's CPU time (holds on a shared "
        f"machine); {a.seconds:.0f} s per measurement; GPU step rate to feed: "
        f"{a.gpu_rate:.0f} img/s (--gpu-rate).\n"
    )
    print(
        f"| pipeline | images per CPU-second (one worker) | CPU cores to feed {a.gpu_rate:.0f} img/s |\n|---|---|---|"
    )
    for name, r, _ in rows:
        print(f"| {name} | {r:.0f} | {math.ceil(a.gpu_rate / r)} |")
    print(
        f"\nThe batched views themselves (2 x 224 px from 256 px uint8, crop + flip + jitter + grayscale + blur): "
        f"{aug:.0f} img per CPU-second on this CPU (2 threads, batch 64) — on the GPU in training (not measured here). "
        f"Per-worker speed-up of the decode-only workers over per-image augmentation: {dec / per_image:.1f}x "
        f"(folder), {stream / per_image:.1f}x (litdata)."
    )


if __name__ == "__main__":
    main()
