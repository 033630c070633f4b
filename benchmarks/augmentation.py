"""Throughput of the multi-view augmentation presets: per image with torchvision v2 (what one dataloader worker
does) against batched with kornia (``batch_augment: true``, what runs on the device after transfer; here on
the CPU), side by side in one run.

    scripts/with_jemalloc.sh .venv/bin/python benchmarks/augmentation.py [--seconds 3]

"images/s" counts source images (each produces all the preset's views).
"""

from __future__ import annotations

import argparse
import time

import torch

from lightning_ssl.data import MedicalViews, MultiCropViews, SatelliteViews, SimCLRViews
from lightning_ssl.data.transforms import ViewPreset
from lightning_ssl.precision import describe_machine


def presets() -> list[tuple[str, ViewPreset, int, int]]:
    return [
        ("SimCLR, Fashion-MNIST 28 px gray", SimCLRViews(min_scale=0.4, jitter_strength=0.5, blur_prob=0.0), 28, 1),
        ("SimCLR, CIFAR 32 px RGB", SimCLRViews(min_scale=0.08, jitter_strength=0.5, blur_prob=0.0), 32, 3),
        ("SimCLR + blur, STL-10 96 px RGB", SimCLRViews(), 96, 3),
        ("SimCLR + blur, ImageNet 224 px RGB", SimCLRViews(), 224, 3),
        ("Medical 224 px gray", MedicalViews(), 224, 1),
        ("Satellite 64 px RGB", SatelliteViews(), 64, 3),
        ("DINO multi-crop 2x224 + 6x96 px RGB", MultiCropViews(), 224, 3),
    ]


def per_image(preset: ViewPreset, size: int, channels: int, seconds: float) -> float:
    t = preset.build(size, channels, (0.5,) * channels, (0.25,) * channels)
    imgs = torch.randint(0, 256, (64, channels, size, size), dtype=torch.uint8)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        t(imgs[n % 64])
        n += 1
    return n / (time.perf_counter() - t0)


def batched(preset: ViewPreset, size: int, channels: int, seconds: float, batch: int) -> float:
    t = preset.build_batched(size, channels, (0.5,) * channels, (0.25,) * channels)
    x = torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8)
    t(x.float() / 255)  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        t(x.float() / 255)
        n += batch
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--batch", type=int, default=256)
    a = p.parse_args()
    rows = []
    for name, preset, size, channels in presets():
        torch.set_num_threads(1)  # a dataloader worker uses one thread
        one = per_image(preset, size, channels, a.seconds)
        torch.set_num_threads(2)
        b = batched(preset, size, channels, a.seconds, a.batch if size <= 96 else a.batch // 4)
        rows.append((name, len(preset.views), one, b))
        print(rows[-1], flush=True)
    print(f"\n{describe_machine('fp32 (augmentation)')}")
    print(
        f"Per image: torchvision v2 in one process, 1 thread (= one dataloader worker). Batched: kornia on "
        f"the CPU, 2 threads, batch {a.batch} (64 at >96 px).\n"
    )
    print("| preset | views | per image, 1 worker (img/s) | batched, CPU (img/s) | ratio |\n|---|---|---|---|---|")
    for name, v, one, b in rows:
        print(f"| {name} | {v} | {one:.0f} | {b:.0f} | {b / one:.1f}x |")


if __name__ == "__main__":
    main()
