"""kNN report after pretraining: learned backbone vs the same architecture at random init vs raw pixels.

    python -m lightning_ssl.eval.report --config configs/simclr/fashion_mnist.yaml [--ckpt last | path.ckpt]
        [--model.init_args... overrides]

``--ckpt last`` (default) is the last checkpoint of the newest run under the config's ``trainer.default_root_dir``.

Uses the config's datamodule with the *full* labelled training set as the kNN bank and its test split as
queries; the random-init model is built from the same config and seed. Prints a Markdown table and writes
it as JSON next to the checkpoint (``knn_report.json``).
"""

from __future__ import annotations

import argparse
import functools
import json
import operator
import time
from pathlib import Path

import torch
from torch import nn

from lightning_ssl import runs
from lightning_ssl.checkpoint import load_method
from lightning_ssl.eval.features import extract_features
from lightning_ssl.metrics.knn import knn_accuracy


def evaluate_knn(
    model: nn.Module | None, datamodule, ks=(20, 200), temperature: float = 0.07, device: str = "cpu"
) -> dict:
    """Weighted kNN top-1 of ``model.embed`` (raw pixels if ``model`` is None) on the datamodule's test split,
    with all labelled training images as the bank. Returns ``{"dim", "k=..": accuracy, "seconds"}``."""
    t = time.time()
    datamodule.val_bank_size = None
    if not hasattr(datamodule, "val_set"):
        datamodule.prepare_data()
        datamodule.setup("validate")
    test_loader, bank_loader = datamodule.test_dataloader()
    fn = model if model is not None else nn.Flatten()
    qf, ql = extract_features(fn, test_loader, device, batch_transform=datamodule.on_after_batch_transfer)
    bf, bl = extract_features(fn, bank_loader, device, batch_transform=datamodule.on_after_batch_transfer)
    acc = knn_accuracy(qf, ql, bf, bl, datamodule.num_classes, list(ks), temperature)
    return {
        "dim": qf.shape[1],
        **{f"k={k}": a for k, a in acc.items()},
        "seconds": round(time.time() - t, 1),
        "queries": len(ql),
        "bank": len(bl),
    }


def markdown_table(rows: dict[str, dict], ks) -> str:
    lines = [
        "| representation | dim | " + " | ".join(f"kNN top-1, k={k}" for k in ks) + " |",
        "|" + "---|" * (len(ks) + 2),
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['dim']} | " + " | ".join(f"{100 * r[f'k={k}']:.2f}%" for k in ks) + " |")
    return "\n".join(lines)


def run(
    config: list[str],
    ckpt: str,
    ks: list[int],
    temperature: float = 0.07,
    device: str = "cpu",
    overrides: list[str] | None = None,
) -> dict:
    from lightning_ssl.cli import cli as run_cli

    args = (
        functools.reduce(operator.iadd, (["--config", c] for c in config), [])
        + list(overrides or [])
        + ["--trainer.logger=false"]
    )
    cli = run_cli(args, run=False)
    if ckpt == "last":
        ckpt = str(runs.latest_checkpoint(cli.trainer.default_root_dir))
    learned = load_method(ckpt)
    rows = {
        f"learned ({type(learned).__name__})": evaluate_knn(learned, cli.datamodule, ks, temperature, device),
        "random init (same architecture)": evaluate_knn(cli.model, cli.datamodule, ks, temperature, device),
        "raw pixels": evaluate_knn(None, cli.datamodule, ks, temperature, device),
    }
    r = next(iter(rows.values()))
    print(
        f"\n{ckpt}\nkNN on {type(cli.datamodule).__name__} test ({r['queries']} queries, bank of {r['bank']} training "
        f"images, cosine, T={temperature}):\n\n{markdown_table(rows, ks)}\n"
    )
    out = Path(ckpt).with_name("knn_report.json")
    out.write_text(json.dumps({"rows": rows, "temperature": temperature}, indent=2))
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="kNN report: learned vs random-init vs raw pixels")
    p.add_argument("--config", action="append", required=True, help="the config(s) used for pretraining")
    p.add_argument("--ckpt", default="last", help="a checkpoint, or last: the newest run of the config")
    p.add_argument("--k", type=int, nargs="+", default=[20, 200])
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a, overrides = p.parse_known_args(argv)  # the rest: config overrides used for pretraining
    run(a.config, a.ckpt, a.k, a.temperature, a.device, overrides)


if __name__ == "__main__":
    main()
