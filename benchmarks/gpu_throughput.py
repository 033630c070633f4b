"""Training throughput on one accelerator: SimCLR ResNet-18 at 32 px and MAE ViT-S/16 at 224 px on generated
images, with the views made per image in CPU dataloader workers vs batched on the device after transfer
(kornia, per-sample parameters), at the precision auto picks (bf16-mixed on bf16 GPUs) + channels_last, optionally
torch.compile; plus the model FLOP utilisation (MFU) estimated from FLOPs counted by ``torch.utils.flop_counter``
for one training step.

    .venv/bin/python benchmarks/gpu_throughput.py                      # on a GPU (benchmarks/gpu.sh runs it)
    .venv/bin/python benchmarks/gpu_throughput.py --quick              # a CPU smoke run at tiny sizes

Images/s are measured over the training steps after ``--warmup`` steps (compilation and worker start-up
excluded), with ``torch.cuda.synchronize`` at both ends. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os

import lightning as L
import torch
from timing import StepTimer
from torch.utils.flop_counter import FlopCounterMode

from lightning_ssl.callbacks.performance import Performance
from lightning_ssl.data import ClassifierViews, SimCLRViews, SyntheticDataModule
from lightning_ssl.methods import MAE, SimCLR
from lightning_ssl.modules.backbones import ResNet
from lightning_ssl.modules.vit import ViT
from lightning_ssl.precision import auto_precision, describe_machine

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, for the MFU estimate.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}


def peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v * 1e12 for k, v in PEAK_TFLOPS.items() if k in name), None)


def build(method: str, quick: bool):
    if method == "simclr":
        size = 32
        model = SimCLR(ResNet("resnet18", in_channels=3, image_size=size), 2048, 128, 0.2)
        views = SimCLRViews(min_scale=0.2)
    else:
        size = 32 if quick else 224
        vit = ViT(in_channels=3, image_size=size, patch_size=8 if quick else 16, embed_dim=384, depth=12, num_heads=6)
        model = MAE(vit, decoder_dim=512, decoder_depth=8, decoder_heads=16)
        views = ClassifierViews(min_scale=0.2)
    return model, views, size


def step_flops(model, views, size: int, batch_size: int, device: str) -> float:
    """FLOPs of one forward + backward training step (per batch), counted on the real model."""
    model = model.to(device).train()
    x = torch.rand(batch_size, 3, size, size, device=device)
    batch = ([x] * len(views.views), torch.zeros(batch_size, dtype=torch.long))
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model.training_step(batch, 0)["loss"]
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def run(method: str, batched: bool, compile: bool, a) -> dict:
    torch.manual_seed(0)
    model, views, size = build(method, a.quick)
    n = a.batch_size * (a.steps + 1)
    dm = SyntheticDataModule(
        num_samples=n,
        num_classes=10,
        image_size=size,
        channels=3,
        batch_size=a.batch_size,
        views=views,
        batch_augment=batched,
        num_workers=a.workers,
        val_bank_size=0,
        pin_memory=torch.cuda.is_available(),
    )
    timer = StepTimer(a.warmup, sync=True)
    trainer = L.Trainer(
        max_steps=a.steps,
        precision=auto_precision()[0],
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer, Performance(channels_last=True, compile=compile)],
    )
    trainer.fit(model, datamodule=dm)
    ips = timer.rate
    return {
        "method": method,
        "size": size,
        "augmentation": "batched on device" if batched else f"{a.workers} CPU workers",
        "compile": compile,
        "images_per_s": ips,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["simclr", "mae"])
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--workers", type=int, default=min(8, (os.cpu_count() or 2) - 1))
    p.add_argument("--compile", action="store_true", help="also run with torch.compile of the backbone")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a CPU smoke run")
    a = p.parse_args()
    if a.quick:
        a.batch_size, a.steps, a.warmup, a.workers = 8, 4, 1, 1
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_float32_matmul_precision("high")
    peak = peak_flops()
    rows = []
    for method in a.methods:
        model, views, size = build(method, a.quick)
        flops = step_flops(model, views, size, a.batch_size, device)
        del model
        for batched, comp in [(False, False), (True, False)] + ([(True, True)] if a.compile else []):
            r = run(method, batched, comp, a)
            r["tflops_per_s"] = flops / a.batch_size * r["images_per_s"] / 1e12
            r["mfu"] = r["tflops_per_s"] * 1e12 / peak if peak else None
            rows.append(r)
            print(json.dumps(r), flush=True)
    print(f"\n{describe_machine()}\nbatch {a.batch_size}, channels_last, {a.steps} steps ({a.warmup} warm-up)\n")
    print(
        "| method | image size | augmentation | compile | images/s | model TFLOP/s | MFU |"
        "\n|---|---|---|---|---|---|---|"
    )
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(
            f"| {r['method']} | {r['size']} | {r['augmentation']} | {'yes' if r['compile'] else 'no'} "
            f"| {r['images_per_s']:.0f} | {r['tflops_per_s']:.2f} | {mfu} |"
        )


if __name__ == "__main__":
    main()
