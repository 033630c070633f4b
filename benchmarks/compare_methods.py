"""Pretrain SimCLR, MoCo v2, MoCo v3, BYOL and SimSiam on Fashion-MNIST with the same small CNN, views, batch
size, optimizer and number of epochs (their configs/<method>/fashion_mnist.yaml), then print one table with
each method's kNN top-1 on the test set (bank: all 60k training images) and its training throughput.

    scripts/with_jemalloc.sh .venv/bin/python benchmarks/compare_methods.py [--epochs 10] [--methods simclr byol]

Throughput counts training images per second of training-loop time (validation excluded); each image is
augmented into two views. Run it alone on the machine: timings are side by side in one process.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning as L

from lightning_ssl.cli import cli
from lightning_ssl.eval.report import evaluate_knn
from lightning_ssl.precision import describe_machine

NAMES = {"simclr": "SimCLR", "moco": "MoCo v2", "mocov3": "MoCo v3", "byol": "BYOL", "simsiam": "SimSiam"}
NAMES.update({"rotation": "RotNet (rotation)", "jigsaw": "Jigsaw"})
NAMES.update({"mae": "MAE (ViT)", "dino": "DINO (ViT)"})
NAMES["barlow_twins"] = "Barlow Twins"
NAMES["vicreg"] = "VICReg"
NAMES["swav"] = "SwAV (multi-crop)"
NAMES["nnclr"] = "NNCLR"
NAMES["ijepa"] = "I-JEPA (ViT)"
NAMES["simmim"] = "SimMIM (ViT)"


class TrainThroughput(L.Callback):
    """Images per second over the training batches only."""

    def __init__(self) -> None:
        self.images, self.seconds, self._t = 0, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seconds += time.perf_counter() - self._t
        self.images += len(batch[1])


def run_method(method: str, epochs: int, out_dir: Path, extra: list[str]) -> dict:
    c = cli([
        "--config", f"configs/{method}/fashion_mnist.yaml", f"--trainer.max_epochs={epochs}",
        f"--trainer.check_val_every_n_epoch={epochs}", "--trainer.enable_progress_bar=false", "--trainer.logger=false",
        f"--trainer.default_root_dir={out_dir / method}", f"--checkpoint.dirpath={out_dir / method / 'ckpt'}", *extra,
    ], run=False)
    meter = TrainThroughput()
    c.trainer.callbacks.append(meter)
    t0 = time.perf_counter()
    c.trainer.fit(c.model, datamodule=c.datamodule)
    wall = time.perf_counter() - t0
    knn = evaluate_knn(c.model, c.datamodule)
    return {"method": NAMES.get(method, method), "knn20": knn["k=20"], "knn200": knn["k=200"],
            "images_per_s": meter.images / meter.seconds, "wall_s": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=list(NAMES))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", default="outputs/bench_methods")
    a, extra = p.parse_known_args()
    out = Path(a.out)
    rows = []
    for m in a.methods:
        rows.append(run_method(m, a.epochs, out, extra))
        print(json.dumps(rows[-1]), flush=True)
    table = [describe_machine(),
             f"Fashion-MNIST, each method's configs/<method>/fashion_mnist.yaml, {a.epochs} epochs, batched views", "", "| method | kNN top-1 k=20 | kNN top-1 k=200 | train images/s | wall time |", "|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['method']} | {100 * r['knn20']:.2f}% | {100 * r['knn200']:.2f}% | {r['images_per_s']:.0f} "
                     f"| {r['wall_s'] / 60:.1f} min |")
    text = "\n".join(table)
    print("\n" + text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
