"""Pretrain SimCLR, MoCo v2, MoCo v3, BYOL and SimSiam on Fashion-MNIST with the same small CNN, views, batch
size (256 for all, ``--batch-size``), optimizer and number of epochs (their configs/<method>/fashion_mnist.yaml),
then print one table with each method's kNN top-1 on the test set (bank: all 60k training images) and its
training throughput.

    scripts/with_jemalloc.sh .venv/bin/python benchmarks/compare_methods.py [--epochs 10] [--methods simclr byol]

BEiT needs a trained visual tokenizer: the script trains one first (configs/visual_tokenizer/fashion_mnist.yaml,
``--tokenizer-epochs``, default ``--epochs``; its codebook usage and perplexity on the test set are printed), or
reuses the one it trained before in ``--out``, or takes ``--tokenizer path/to/last.ckpt``.

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
NAMES.update({"mae": "MAE (ViT)", "dino": "DINO (ViT)", "beit": "BEiT (ViT)"})
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
    c = cli(
        [
            "--config",
            f"configs/{method}/fashion_mnist.yaml",
            f"--trainer.max_epochs={epochs}",
            f"--trainer.check_val_every_n_epoch={epochs}",
            "--trainer.enable_progress_bar=false",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={out_dir / method}",
            f"--checkpoint.dirpath={out_dir / method / 'ckpt'}",
            *extra,
        ],
        run=False,
    )
    meter = TrainThroughput()
    c.trainer.callbacks.append(meter)
    t0 = time.perf_counter()
    c.trainer.fit(c.model, datamodule=c.datamodule)
    wall = time.perf_counter() - t0
    knn = evaluate_knn(c.model, c.datamodule)
    return {
        "method": NAMES.get(method, method),
        "knn20": knn["k=20"],
        "knn200": knn["k=200"],
        "images_per_s": meter.images / meter.seconds,
        "wall_s": wall,
    }


def train_tokenizer(epochs: int, out_dir: Path, extra: list[str]) -> tuple[str, dict]:
    """Train BEiT's visual tokenizer (or reuse the one in ``out_dir``); its checkpoint and codebook statistics."""
    ckpt = out_dir / "visual_tokenizer" / "ckpt" / "last.ckpt"
    stats_file = ckpt.with_name("codebook.json")
    if ckpt.exists() and stats_file.exists():
        return str(ckpt), json.loads(stats_file.read_text())
    c = cli(
        [
            "--config",
            "configs/visual_tokenizer/fashion_mnist.yaml",
            f"--trainer.max_epochs={epochs}",
            f"--trainer.check_val_every_n_epoch={epochs}",
            "--trainer.enable_progress_bar=false",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={out_dir / 'visual_tokenizer'}",
            f"--checkpoint.dirpath={ckpt.parent}",
            *extra,
        ],
        run=False,
    )
    t0 = time.perf_counter()
    c.trainer.fit(c.model, datamodule=c.datamodule)
    usage, perplexity = c.model.last_val_usage
    metrics = {k: float(v) for k, v in c.trainer.callback_metrics.items() if k.startswith("val/rec")}
    stats = {
        "codebook_usage": usage,
        "perplexity": perplexity,
        "num_codes": c.model.num_codes,
        "epochs": epochs,
        "wall_s": time.perf_counter() - t0,
        **metrics,
    }
    stats_file.write_text(json.dumps(stats))
    print(json.dumps({"visual_tokenizer": stats}), flush=True)
    return str(ckpt), stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=list(NAMES))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", default="outputs/bench_methods")
    p.add_argument("--tokenizer", default=None, help="BEiT: a trained VisualTokenizer checkpoint (default: train one)")
    p.add_argument("--tokenizer-epochs", type=int, default=None, help="BEiT: epochs of tokenizer training")
    p.add_argument("--batch-size", type=int, default=256, help="one batch size for every method (0: each config's)")
    a, extra = p.parse_known_args()
    out = Path(a.out)
    rows, notes = [], []
    for m in a.methods:
        method_extra = list(extra) + ([f"--data.init_args.batch_size={a.batch_size}"] if a.batch_size else [])
        if m == "beit":
            if a.tokenizer is None:
                a.tokenizer, stats = train_tokenizer(a.tokenizer_epochs or a.epochs, out, extra)
                notes.append(
                    f"BEiT's tokenizer ({stats['epochs']} epochs, {stats['wall_s'] / 60:.1f} min): "
                    f"{100 * stats['codebook_usage']:.1f}% of {stats['num_codes']} codes used on the test "
                    f"set, "
                    f"perplexity {stats['perplexity']:.0f}"
                )
            method_extra.append(f"--model.init_args.tokenizer={a.tokenizer}")
        rows.append(run_method(m, a.epochs, out, method_extra))
        print(json.dumps(rows[-1]), flush=True)
    table = [
        describe_machine(),
        f"Fashion-MNIST, each method's configs/<method>/fashion_mnist.yaml, {a.epochs} epochs, batched views",
        "",
        "| method | kNN top-1 k=20 | kNN top-1 k=200 | train images/s | wall time |",
        "|---|---|---|---|---|",
    ]
    table.extend(
        f"| {r['method']} | {100 * r['knn20']:.2f}% | {100 * r['knn200']:.2f}% | {r['images_per_s']:.0f} "
        f"| {r['wall_s'] / 60:.1f} min |"
        for r in rows
    )
    text = "\n".join(table + (["", *notes] if notes else []))
    print("\n" + text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
