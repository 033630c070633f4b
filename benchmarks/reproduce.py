"""This library's CIFAR-10 recipes (configs/<method>/cifar10.yaml) under lightly's CIFAR-10 benchmark protocol:
ResNet-18 with the CIFAR stem, 200 epochs, a kNN classifier (k=200) on the test set after every epoch, the best
top-1 over the epochs; printed beside lightly's published numbers for the same protocol.

    python benchmarks/reproduce.py                          # every recipe; a GPU and CIFAR-10 under data/
    python benchmarks/reproduce.py --methods simclr byol --epochs 200 --data data [--download]
    python benchmarks/reproduce.py --steps 300 --methods simclr byol     # the path on a CPU, a few hundred steps

With CIFAR-10 (torchvision's copy under ``--data``, or ``--download`` with internet) and a GPU, each recipe trains
as its config says (optimizer, schedule, batch, views) for ``--epochs``. Without them (a CPU, or no CIFAR-10: no
package ships it), the same recipes run for ``--steps`` steps on generated 32 px stand-ins (10 classes of
low-frequency patterns plus noise, ``SyntheticDataModule``), which says so in its output, and the table reports the
loss over the first and last tenth of the steps and steps/s, so the whole path (config, views, optimizer, schedule,
method) is exercised; their kNN accuracy is not CIFAR-10's and is not printed beside lightly's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightning_ssl.cli import cli
from lightning_ssl.precision import describe_machine

ROOT = Path(__file__).resolve().parents[1]
# lightly, docs/source/getting_started/benchmarks.rst, "CIFAR-10 benchmark results": kNN top-1 (k=200) of a
# ResNet-18 after 200 epochs, at batch 512 (and 128); lightly's own hyperparameters, 2x4090-class GPUs.
LIGHTLY_200_EPOCHS = {
    "barlow_twins": {512: 0.819, 128: 0.842},
    "byol": {512: 0.868, 128: 0.869},
    "dino": {512: 0.813, 128: 0.840},
    "moco": {512: 0.847, 128: 0.838},
    "nnclr": {512: 0.815, 128: 0.834},
    "simclr": {512: 0.848, 128: 0.847},
    "simsiam": {512: 0.764, 128: 0.819},
    "swav": {512: 0.842, 128: 0.812},
}
METHODS = [*LIGHTLY_200_EPOCHS, "mocov3", "vicreg"]


class StepRecorder(L.Callback):
    """The training loss of every optimizer step and the wall time of each; the kNN top-1 of every validation."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.times: list[float] = []
        self.knn: list[float] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get("val/knn_top1_k200")
        if value is not None and not trainer.sanity_checking:
            self.knn.append(float(value))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.losses.append(float(loss))
            self.times.append(time.perf_counter())


def has_cifar10(root: Path) -> bool:
    return (root / "cifar-10-batches-py").is_dir()


def run(method: str, args: argparse.Namespace, real: bool, out: Path) -> dict[str, Any]:
    recorder = StepRecorder()
    config = ROOT / "configs" / method / "cifar10.yaml"
    common = [
        "fit",
        "--config",
        str(config),
        f"--trainer.default_root_dir={out / method}",
        f"--checkpoint.dirpath={out / method / 'ckpt'}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--knn.k=[200]",
        "--probe.enabled=false",
    ]
    if real:
        extra = [
            f"--data.root={args.data}",
            f"--data.download={str(args.download).lower()}",
            f"--trainer.max_epochs={args.epochs}",
            "--trainer.check_val_every_n_epoch=1",
            "--knn.every_n_epochs=1",
        ]
    else:
        extra = [
            "--data=lightning_ssl.data.SyntheticDataModule",
            "--data.image_size=32",
            "--data.num_classes=10",
            f"--data.num_samples={max(args.batch_size * 4, 256)}",
            f"--data.batch_size={args.batch_size}",
            "--data.num_workers=0",
            f"--trainer.max_steps={args.steps}",
            "--trainer.limit_val_batches=0",
            "--knn.every_n_epochs=0",
        ]
        if not torch.cuda.is_available():
            extra.append("--trainer.accelerator=cpu")
    if args.batch_size and real:
        extra.append(f"--data.batch_size={args.batch_size}")
    c = cli([*common, *extra], trainer_defaults={"callbacks": [recorder]})
    best = max(recorder.knn) if real and recorder.knn else None
    losses, times = recorder.losses, recorder.times
    tenth = max(1, len(losses) // 10)
    steps_s = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
    return {
        "method": method,
        "batch": c.datamodule.batch_size,
        "steps": len(losses),
        "loss_first": statistics.fmean(losses[:tenth]),
        "loss_last": statistics.fmean(losses[-tenth:]),
        "steps_s": steps_s,
        "knn": best,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--epochs", type=int, default=200, help="epochs per recipe with CIFAR-10 on a GPU (200)")
    parser.add_argument("--steps", type=int, default=300, help="steps per recipe on stand-ins (300)")
    parser.add_argument("--batch_size", type=int, default=None, help="default: the recipe's (stand-ins: 32)")
    parser.add_argument("--data", type=Path, default=ROOT / "data", help="folder with torchvision's CIFAR-10")
    parser.add_argument("--download", action="store_true", help="download CIFAR-10 into --data (internet)")
    parser.add_argument("--stand-ins", action="store_true", help="generated images even where CIFAR-10 is there")
    args = parser.parse_args()
    real = torch.cuda.is_available() and (has_cifar10(args.data) or args.download) and not args.stand_ins
    if not real:
        args.batch_size = args.batch_size or 32
    print(describe_machine())
    if real:
        print(f"CIFAR-10 from {args.data}; {args.epochs} epochs per recipe; kNN k=200 on the test set every epoch")
    else:
        why = "no GPU" if not torch.cuda.is_available() else "no CIFAR-10 under --data (no package ships it)"
        print(
            f"{why}: GENERATED 32 px STAND-INS for CIFAR-10 (10 classes of patterns + noise), {args.steps} steps per "
            f"recipe at batch {args.batch_size}: this exercises the recipes' path, it measures no CIFAR-10 accuracy"
        )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            rows.append(run(method, args, real, Path(tmp)))
            r = rows[-1]
            print(f"  {method}: loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}, {r['steps_s']:.2f} steps/s")
    print()
    if real:
        print("| recipe | batch | kNN top-1 (k=200, best epoch) | lightly, batch 512 | lightly, batch 128 |")
        print("|---|---|---|---|---|")
        for r in rows:
            ref = LIGHTLY_200_EPOCHS.get(r["method"], {})
            knn = f"{r['knn']:.3f}" if r["knn"] is not None else "n/a"
            print(f"| {r['method']} | {r['batch']} | {knn} | {ref.get(512, '-')} | {ref.get(128, '-')} |")
    else:
        print("| recipe | batch | steps | loss, first 10% | loss, last 10% | down | steps/s |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            down = "yes" if r["loss_last"] < r["loss_first"] else "NO"
            print(
                f"| {r['method']} | {r['batch']} | {r['steps']} | {r['loss_first']:.4f} | {r['loss_last']:.4f} | "
                f"{down} | {r['steps_s']:.2f} |"
            )


if __name__ == "__main__":
    main()
