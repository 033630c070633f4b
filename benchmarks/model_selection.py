"""Which label-free metric picks the best checkpoint? Train several methods at several learning rates on
Fashion-MNIST, keep checkpoints at several step counts, and for each checkpoint measure the label-free metrics
(RankMe, LiDAR, alpha-ReQ, std of normalized embeddings) and the kNN top-1 they should predict; print the
Spearman correlation of each metric with kNN accuracy over all checkpoints and within each method, and how much
kNN accuracy a user loses by picking the checkpoint the metric ranks first.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/model_selection.py \\
        [--methods simclr byol vicreg] [--lr_scales 0.3 1 3] [--steps 50 100 200] [--batch_size 32]

Budgets are optimizer steps, not minutes, so the checkpoints do not depend on the machine's load. Every run uses
its configs/<method>/fashion_mnist.yaml with the learning rate scaled by ``lr_scale``, its cosine schedule
ending at the last of ``--steps``; checkpoints are written at each of ``--steps``. It resumes: trained
checkpoints and measured rows (``rows.jsonl``) in ``--out`` are reused, so a rerun only does what is missing.

The metrics, on the backbone's ``embed`` features:
* kNN top-1 (k=20, T=0.07, cosine) of ``--queries`` test images against a bank of ``--bank`` training images;
* RankMe, alpha-ReQ and the std of L2-normalized embeddings x sqrt(D) on the first ``--unlabelled`` bank images,
  un-augmented (no labels used);
* LiDAR on ``--lidar_samples`` training images x ``--lidar_views`` augmentations (the SimCLR demo's views, drawn
  once with a fixed seed and shared by every checkpoint).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import lightning as L
import torch
import yaml

from lightning_ssl.callbacks.guards import alpha_req, embedding_std, lidar, rankme
from lightning_ssl.checkpoint import load_method
from lightning_ssl.data import FashionMNISTDataModule, SimCLRViews
from lightning_ssl.metrics.knn import knn_accuracy
from lightning_ssl.precision import describe_machine

METRICS = {  # name -> (row key, sign: +1 when larger should mean better)
    "RankMe": ("rankme", 1),
    "LiDAR": ("lidar", 1),
    "alpha-ReQ (alpha)": ("alpha_req", -1),
    "alpha-ReQ (-|alpha - 1|)": ("alpha_req_dist", 1),
    "embedding std": ("embedding_std", 1),
}


class SaveAtSteps(L.Callback):
    """Write a checkpoint after each of ``steps`` optimizer steps, as ``dir/step{N}.ckpt``."""

    def __init__(self, steps: list[int], directory: Path) -> None:
        self.steps, self.directory = set(steps), directory

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step in self.steps:
            trainer.save_checkpoint(self.directory / f"step{trainer.global_step}.ckpt")


def train(method: str, lr_scale: float, steps: list[int], batch_size: int, run_dir: Path) -> None:
    """Train one (method, lr_scale) run to max(steps), writing the checkpoints that are missing."""
    from lightning_ssl.cli import cli

    if all((run_dir / f"step{s}.ckpt").exists() for s in steps):
        return
    config = f"configs/{method}/fashion_mnist.yaml"
    lr = yaml.safe_load(Path(config).read_text())["model"]["init_args"]["optimizer"]["init_args"]["lr"]
    c = cli(
        [
            "--config",
            config,
            f"--model.init_args.optimizer.init_args.lr={lr * lr_scale}",
            f"--trainer.max_steps={max(steps)}",
            "--trainer.max_epochs=-1",
            "--trainer.enable_progress_bar=false",
            "--trainer.logger=false",
            "--trainer.limit_val_batches=0",
            "--checkpoint.save_top_k=0",
            "--checkpoint.save_last=false",
            f"--trainer.default_root_dir={run_dir}",
            f"--data.init_args.batch_size={batch_size}",
            "--knn.every_n_epochs=0",
            "--probe.enabled=false",
            "--collapse.every_n_steps=0",
        ],
        run=False,
    )
    c.trainer.callbacks.append(SaveAtSteps(steps, run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        c.trainer.fit(c.model, datamodule=c.datamodule)
    except Exception as e:  # a divergent learning rate stops training: keep the checkpoints written so far
        (run_dir / "stopped.txt").write_text(f"{type(e).__name__}: {e}\n")
        print(f"{run_dir.name}: stopped ({type(e).__name__}: {str(e)[:200]})", flush=True)


@torch.no_grad()
def embed(model, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    return torch.cat([model.embed(x).float().flatten(1) for x in images.split(batch_size)])


def evaluation_data(a: argparse.Namespace, out: Path) -> dict[str, torch.Tensor]:
    """Bank, queries and LiDAR views, built once and stored in ``out/eval_data.pt``."""
    path = out / "eval_data.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    dm = FashionMNISTDataModule(root="data", batch_size=512, num_workers=0, batch_augment=True, val_bank_size=None)
    bank, bank_y = dm.evaluation_tensors("train", max_images=a.bank)
    queries, queries_y = dm.evaluation_tensors("test", max_images=a.queries)
    raw = dm.load_split("labelled_train")[0][-a.lidar_samples :]  # images the bank does not use, uint8
    x = raw.unsqueeze(1).float() / 255 if raw.ndim == 3 else raw.float() / 255
    views_fn = SimCLRViews(min_scale=0.4, jitter_strength=1.5, solarize_prob=0.2, blur_prob=0.0).build_batched(
        28, 1, *dm.norm_stats()
    )
    torch.manual_seed(0)
    views: list[torch.Tensor] = []
    while len(views) < a.lidar_views:
        views += list(views_fn(x))
    data = {
        "bank": bank,
        "bank_y": bank_y,
        "queries": queries,
        "queries_y": queries_y,
        "lidar_views": torch.stack(views[: a.lidar_views], dim=1),  # (n, q, C, H, W)
    }
    out.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return data


def measure(ckpt: Path, data: dict[str, torch.Tensor], unlabelled: int) -> dict[str, float]:
    model = load_method(ckpt).eval()
    bank_f, query_f = embed(model, data["bank"]), embed(model, data["queries"])
    knn = knn_accuracy(query_f, data["queries_y"], bank_f, data["bank_y"], 10, [20], 0.07)[20]
    z = bank_f[:unlabelled]
    n, q = data["lidar_views"].shape[:2]
    views = embed(model, data["lidar_views"].flatten(0, 1)).view(n, q, -1)
    alpha = alpha_req(z)
    return {
        "knn": knn,
        "rankme": rankme(z),
        "lidar": lidar(views),
        "alpha_req": alpha,
        "alpha_req_dist": -abs(alpha - 1),
        "embedding_std": embedding_std(z) * math.sqrt(z.shape[1]),
        "dim": z.shape[1],
    }


def spearman(x: list[float], y: list[float]) -> float:
    from scipy.stats import spearmanr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def tables(rows: list[dict], a: argparse.Namespace) -> str:
    methods = sorted({r["method"] for r in rows})
    best = max(r["knn"] for r in rows)
    lines = [
        describe_machine(),
        "",
        f"Fashion-MNIST; {len(rows)} checkpoints: methods {', '.join(methods)} x lr scale "
        f"{', '.join(map(str, a.lr_scales))} x steps {', '.join(map(str, a.steps))} (batch {a.batch_size}); kNN k=20 "
        f"on {a.queries} test queries against {a.bank} training images; RankMe / alpha-ReQ / std on "
        f"{a.unlabelled} un-augmented training images; LiDAR on {a.lidar_samples} images x {a.lidar_views} views.",
        "",
        "| label-free metric | Spearman rho with kNN, all checkpoints | mean rho within a method | "
        f"kNN of its top pick (best: {100 * best:.2f}%) |",
        "|---|---|---|---|",
    ]
    for name, (key, sign) in METRICS.items():
        rho = spearman([r[key] for r in rows], [r["knn"] for r in rows])
        within = [
            spearman([r[key] for r in rows if r["method"] == m], [r["knn"] for r in rows if r["method"] == m])
            for m in methods
        ]
        within = [w for w in within if not math.isnan(w)]
        pick = max(rows, key=lambda r, key=key, sign=sign: sign * r[key])
        mean_within = sum(within) / len(within) if within else float("nan")
        lines.append(
            f"| {name} | {rho:+.3f} | {mean_within:+.3f} | {100 * pick['knn']:.2f}% "
            f"({pick['method']}, lr x{pick['lr_scale']}, step {pick['step']}) |"
        )
    lines += [
        "",
        "| method | lr scale | step | kNN top-1 | RankMe | LiDAR | alpha-ReQ | embedding std |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["method"], r["lr_scale"], r["step"])):
        lines.append(
            f"| {r['method']} | {r['lr_scale']} | {r['step']} | {100 * r['knn']:.2f}% | {r['rankme']:.1f} | "
            f"{r['lidar']:.1f} | {r['alpha_req']:.2f} | {r['embedding_std']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["simclr", "byol", "vicreg"])
    p.add_argument("--lr_scales", type=float, nargs="+", default=[0.3, 1.0, 3.0])
    p.add_argument(
        "--steps", type=int, nargs="+", default=[50, 100, 200], help="checkpoint steps; the last ends the run"
    )
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--bank", type=int, default=2000, help="kNN bank: training images")
    p.add_argument("--queries", type=int, default=1000, help="kNN queries: test images")
    p.add_argument("--unlabelled", type=int, default=1024, help="images for RankMe / alpha-ReQ / std")
    p.add_argument("--lidar_samples", type=int, default=250)
    p.add_argument("--lidar_views", type=int, default=4)
    p.add_argument("--out", default="outputs/model_selection")
    a = p.parse_args(argv)
    a.steps = sorted(a.steps)
    out = Path(a.out)
    data = evaluation_data(a, out)
    done_file = out / "rows.jsonl"
    done = {}
    if done_file.exists():
        for line in done_file.read_text().splitlines():
            r = json.loads(line)
            done[r["ckpt"]] = r
    t0 = time.time()
    for method in a.methods:
        for scale in a.lr_scales:
            run_dir = out / f"{method}_lr{scale:g}"
            if any(str(run_dir / f"step{s}.ckpt") not in done for s in a.steps):
                train(method, scale, a.steps, a.batch_size, run_dir)
            for s in a.steps:
                ckpt = run_dir / f"step{s}.ckpt"
                if str(ckpt) in done or not ckpt.exists():
                    continue
                row = {
                    "ckpt": str(ckpt),
                    "method": method,
                    "lr_scale": scale,
                    "step": s,
                    **measure(ckpt, data, a.unlabelled),
                }
                done[str(ckpt)] = row
                with done_file.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"[{(time.time() - t0) / 60:.1f} min] {json.dumps(row)}", flush=True)
    rows = [
        r
        for r in done.values()
        if r["method"] in a.methods
        and r["lr_scale"] in a.lr_scales
        and r["step"] in a.steps
        and all(math.isfinite(r[k]) for k, _ in METRICS.values())
    ]
    text = tables(rows, a)
    print("\n" + text)
    (out / "table.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
