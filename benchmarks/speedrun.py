"""Which method learns fastest per CPU-minute? Each method trains from its Fashion-MNIST config for a fixed time
budget (``budget.minutes``: the LR / EMA schedules end with the budget), then its backbone is evaluated with the
demo's kNN protocol (test set of 10k, bank of all 60k training images, cosine, T=0.07, k=20 and 200). One table,
side by side, with the raw-pixel and random-init rows it must beat.

    scripts/with_jemalloc.sh .venv/bin/python benchmarks/speedrun.py [--minutes 5 10 20]
        [--methods simclr mocov3 byol vicreg] [--steps 2000]   # --steps: a fixed step count instead (tuning)
        [-- extra CLI overrides for every run, e.g. --model.init_args.temperature=0.1]
    e.g. --methods aim dino_v2 dino_gram simclr --minutes 5 10    (the 2024-26 methods beside SimCLR)

VICReg is the fourth default: the best of the other methods after one epoch in benchmarks/compare_methods.py.

Run it alone on the machine: a time budget measured while other jobs run buys fewer steps.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lightning_ssl.cli import cli
from lightning_ssl.eval.report import evaluate_knn
from lightning_ssl.precision import describe_machine

CONFIGS = {
    "simclr": "configs/simclr/fashion_mnist.yaml",
    "mocov3": "configs/mocov3/fashion_mnist.yaml",
    "byol": "configs/byol/fashion_mnist.yaml",
    "rotation": "configs/rotation/fashion_mnist.yaml",
    "moco": "configs/moco/fashion_mnist.yaml",
    "simsiam": "configs/simsiam/fashion_mnist.yaml",
    "mae": "configs/mae/fashion_mnist.yaml",
    "dino": "configs/dino/fashion_mnist.yaml",
    "lejepa": "configs/lejepa/fashion_mnist.yaml",
    "mmcr": "configs/mmcr/fashion_mnist.yaml",
    "densecl": "configs/densecl/fashion_mnist.yaml",
    "dino_v2": "configs/dino/fashion_mnist_dinov2.yaml",  # Sinkhorn-Knopp, registers, iBOT (separate head), KoLeo
    "dino_gram": "configs/dino/fashion_mnist_gram.yaml",  # the same + DINOv3's Gram anchoring from 5/6 of the run
    "aim": "configs/aim/fashion_mnist.yaml",
}


def run(method: str, minutes: float | None, steps: int | None, out: Path, extra: list[str]) -> dict:
    name = f"{method}_{minutes}min" if minutes else f"{method}_{steps}steps"
    limit = [f"--budget.minutes={minutes}"] if minutes else [f"--trainer.max_steps={steps}", "--trainer.max_epochs=-1"]
    config = CONFIGS.get(method) or (
        f"configs/{method}/fashion_mnist.yaml" if Path(f"configs/{method}/fashion_mnist.yaml").exists() else method
    )
    c = cli(
        [
            "--config",
            config,
            *limit,
            "--trainer.enable_progress_bar=false",
            "--trainer.logger=false",
            "--trainer.check_val_every_n_epoch=1000",
            "--knn.every_n_epochs=0",
            "--end_of_run.enabled=false",
            f"--trainer.default_root_dir={out / name}",
            f"--checkpoint.dirpath={out / name / 'ckpt'}",
            *extra,
        ],
        run=False,
    )
    t0 = time.perf_counter()
    c.trainer.fit(c.model, datamodule=c.datamodule)
    wall = time.perf_counter() - t0
    knn = evaluate_knn(c.model, c.datamodule)
    steps_done = c.trainer.global_step
    epochs = steps_done / max(1, c.trainer.num_training_batches)
    return {
        "method": method,
        "config": config,
        "minutes": minutes,
        "steps": steps_done,
        "epochs": round(epochs, 2),
        "wall_s": round(wall, 1),
        "knn20": knn["k=20"],
        "knn200": knn["k=200"],
        "extra": extra,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["simclr", "mocov3", "byol", "vicreg"])
    p.add_argument("--minutes", type=float, nargs="+", default=[5, 10, 20])
    p.add_argument("--steps", type=int, default=None, help="fixed optimizer steps instead of time budgets")
    p.add_argument("--out", default="outputs/speedrun")
    p.add_argument("--baselines", action="store_true", help="also raw pixels and the random-init CNN")
    a, extra = p.parse_known_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    budgets = [None] if a.steps else a.minutes
    for minutes in budgets:
        for m in a.methods:
            rows.append(run(m, minutes, a.steps, out, [e for e in extra if e != "--"]))
            print(json.dumps(rows[-1]), flush=True)
            with open(out / "rows.jsonl", "a") as f:
                f.write(json.dumps(rows[-1]) + "\n")
    base = {}
    if a.baselines:
        c = cli(["--config", CONFIGS["simclr"], "--trainer.logger=false"], run=False)
        base = {"raw pixels": evaluate_knn(None, c.datamodule), "random init": evaluate_knn(c.model, c.datamodule)}
    budget = "training budget" if not a.steps else "optimizer steps"
    lines = [
        describe_machine(),
        "Fashion-MNIST, configs/<method>/fashion_mnist.yaml, kNN top-1 on the 10k test images "
        "(bank: 60k, cosine, T=0.07)",
        "",
        f"| method | {budget} | epochs reached | kNN k=20 | kNN k=200 | wall |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        limit = f"{r['minutes']:g} min" if r["minutes"] else f"{r['steps']}"
        lines.append(
            f"| {r['method']} | {limit} | {r['epochs']:.1f} | {100 * r['knn20']:.2f}% | {100 * r['knn200']:.2f}% "
            f"| {r['wall_s'] / 60:.1f} min |"
        )
    for name, r in base.items():
        lines.append(f"| *{name}* | | | *{100 * r['k=20']:.2f}%* | *{100 * r['k=200']:.2f}%* | |")
    text = "\n".join(lines)
    print("\n" + text)
    (out / "table.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
