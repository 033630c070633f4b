"""Does Gram anchoring keep DINO's patch features local? DINOv2-style DINO on Fashion-MNIST with and without DINOv3's
Gram anchoring (configs/dino/fashion_mnist_dinov2.yaml vs configs/dino/fashion_mnist_gram.yaml: the same run, the
second adds the Gram term from 5/6 of it), same budget, then the teacher backbone (what ``embed`` evaluates) is
measured on held-out test images:

* patch locality: mean cosine similarity of each patch feature to its 4 grid neighbours minus that to patches 3 or
  more steps away (``lightning_ssl.metrics.patch_similarity_stats``; ~0 when an image's patches are all alike);
* mean patch cosine: between distinct patches of an image (rises towards 1 as dense features wash out);
* dense probe R^2: a ridge regression from each patch's feature to its own (normalized) pixels, fit on half the
  images, R^2 on the other half - how much of a patch's content its feature still carries;
* kNN top-1 (k=20, bank of 60k) of the pooled feature: what the anchoring costs, or not, globally.

    scripts/with_jemalloc.sh .venv/bin/python benchmarks/gram_anchoring.py [--minutes 10] [--steps 3000]
        [--images 2000] [--no-knn] [-- extra CLI overrides for both runs, e.g. --model.init_args.gram_start=0.5]

Run it alone on the machine: a time budget measured while other jobs run buys fewer steps. Runs already trained
(the speedrun's ``dino_v2`` and ``dino_gram``) are measured without training again:

    .venv/bin/python benchmarks/gram_anchoring.py --no-knn --checkpoints \
        outputs/speedrun_10/dino_v2_10.0min/ckpt/last.ckpt outputs/speedrun_10/dino_gram_10.0min/ckpt/last.ckpt
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lightning_ssl.checkpoint import safe_load
from lightning_ssl.cli import cli
from lightning_ssl.eval.report import evaluate_knn
from lightning_ssl.loading import load
from lightning_ssl.metrics import patch_similarity_stats
from lightning_ssl.modules.masking import patchify
from lightning_ssl.precision import describe_machine

CONFIGS = {
    "DINOv2 (Sinkhorn, registers, iBOT, KoLeo)": "configs/dino/fashion_mnist_dinov2.yaml",
    "+ Gram anchoring (DINOv3)": "configs/dino/fashion_mnist_gram.yaml",
}


def held_out_images(datamodule, count: int) -> torch.Tensor:
    """The first ``count`` test images, normalized as the model sees them: (count, C, H, W)."""
    datamodule.val_bank_size = None
    if not hasattr(datamodule, "val_set"):
        datamodule.prepare_data()
        datamodule.setup("validate")
    images = []
    for batch in datamodule.test_dataloader()[0]:
        x, _ = datamodule.on_after_batch_transfer(batch, 0)
        images.append(x)
        if sum(len(i) for i in images) >= count:
            break
    return torch.cat(images)[:count]


@torch.no_grad()
def dense_measurements(backbone, images: torch.Tensor, ridge: float = 1e-2) -> dict[str, float]:
    """Patch similarity statistics and the dense probe R^2 of ``backbone``'s patch tokens on ``images``."""
    backbone.eval()
    tokens = torch.cat([backbone.forward_tokens(x)[:, 1:] for x in images.split(256)]).float()  # (n, N, D)
    stats = patch_similarity_stats(tokens, tuple(backbone.grid_size))
    n, num, d = tokens.shape
    feats = torch.cat([tokens.reshape(n * num, d), tokens.new_ones(n * num, 1)], 1)
    pixels = patchify(images.float(), backbone.patch_size).reshape(n * num, -1)
    half = (n // 2) * num
    a, y = feats[:half], pixels[:half]
    w = torch.linalg.solve(a.T @ a + ridge * torch.eye(d + 1), a.T @ y)
    residual = ((feats[half:] @ w - pixels[half:]) ** 2).sum()
    r2 = 1 - residual / ((pixels[half:] - y.mean(0)) ** 2).sum()
    return {**stats, "r2": r2.item()}


def run(name: str, config: str, minutes: float | None, steps: int | None, out: Path, extra: list[str], args) -> dict:
    tag = "gram" if "gram" in config else "plain"
    limit = [f"--budget.minutes={minutes}"] if minutes else [f"--trainer.max_steps={steps}", "--trainer.max_epochs=-1"]
    c = cli(
        [
            "--config",
            config,
            *limit,
            "--trainer.enable_progress_bar=false",
            "--trainer.logger=false",
            "--trainer.check_val_every_n_epoch=1000",
            "--trainer.callbacks=[]",
            "--knn.every_n_epochs=0",
            "--end_of_run.enabled=false",
            f"--trainer.default_root_dir={out / tag}",
            f"--checkpoint.dirpath={out / tag / 'ckpt'}",
            *extra,
        ],
        run=False,
    )
    t0 = time.perf_counter()
    c.trainer.fit(c.model, datamodule=c.datamodule)
    wall = time.perf_counter() - t0
    backbone = c.model.teacher_backbone if c.model.eval_teacher else c.model.backbone
    row = {"name": name, "config": config, "steps": c.trainer.global_step, "wall_s": round(wall, 1)}
    row.update(dense_measurements(backbone, held_out_images(c.datamodule, args.images)))
    if not args.no_knn:
        row["knn20"] = evaluate_knn(c.model, c.datamodule, ks=(20,))["k=20"]
    return row


def measure(name: str, checkpoint: Path, args) -> dict:
    """The same measurements on a trained run's checkpoint, with the test images its config.yaml prepares."""
    module, backbone, _ = load(checkpoint)  # the teacher backbone, as ``embed``
    config = next((d / "config.yaml" for d in checkpoint.resolve().parents if (d / "config.yaml").is_file()), None)
    if config is None:
        raise SystemExit(f"no config.yaml in a folder above {checkpoint}: its run's data settings are needed")
    c = cli(["--config", str(config), "--trainer.logger=false"], run=False)
    row = {"name": name, "config": str(config), "steps": safe_load(checkpoint)["global_step"], "wall_s": None}
    row.update(dense_measurements(backbone, held_out_images(c.datamodule, args.images)))
    if not args.no_knn:
        row["knn20"] = evaluate_knn(module, c.datamodule, ks=(20,))["k=20"]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="training budget per run")
    p.add_argument("--steps", type=int, default=None, help="fixed optimizer steps instead of a time budget")
    p.add_argument("--images", type=int, default=2000, help="held-out test images for the patch measurements")
    p.add_argument("--no-knn", action="store_true", help="skip the kNN evaluation (60k-image bank)")
    p.add_argument(
        "--checkpoints",
        nargs=2,
        type=Path,
        metavar=("PLAIN", "GRAM"),
        help="measure two trained runs (plain, then Gram-anchored) instead of training them",
    )
    p.add_argument("--out", default="outputs/gram_anchoring")
    a, extra = p.parse_known_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = [e for e in extra if e != "--"]
    rows = []
    for (name, config), checkpoint in zip(CONFIGS.items(), a.checkpoints or [None, None], strict=True):
        if checkpoint is not None:
            rows.append(measure(name, checkpoint, a))
        else:
            rows.append(run(name, config, None if a.steps else a.minutes, a.steps, out, extra, a))
        print(json.dumps(rows[-1]), flush=True)
    budget = f"{a.steps} optimizer steps" if a.steps else f"{a.minutes:g} min each"
    if a.checkpoints:
        budget = "trained runs " + ", ".join(str(c) for c in a.checkpoints)
    lines = [
        describe_machine(),
        f"Fashion-MNIST, {budget}; teacher backbone's patch features on {a.images} test images",
        "",
        "| run | steps | patch locality | near / far cosine | mean patch cosine | dense probe R^2 | kNN k=20 | wall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        knn = f"{100 * r['knn20']:.2f}%" if "knn20" in r else "-"
        wall = f"{r['wall_s'] / 60:.1f} min" if r["wall_s"] is not None else "-"
        lines.append(
            f"| {r['name']} | {r['steps']} | {r['locality']:.3f} | {r['near']:.3f} / {r['far']:.3f} | "
            f"{r['mean']:.3f} | {r['r2']:.3f} | {knn} | {wall} |"
        )
    text = "\n".join(lines)
    print("\n" + text)
    (out / "table.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
