"""kNN report after pretraining: learned backbone vs the same architecture at random init vs raw pixels.

    python -m lightning_ssl.eval.report --config configs/simclr/fashion_mnist.yaml \
        --ckpt outputs/simclr_fashion_mnist/checkpoints/last.ckpt [--model.init_args... overrides]

Uses the config's datamodule with the *full* labelled training set as the kNN bank and its test split as
queries; the random-init model is built from the same config and seed. Prints a Markdown table and writes
it as JSON next to the checkpoint (``knn_report.json``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lightning_ssl.checkpoint import load_method
from lightning_ssl.eval.features import extract_features
from lightning_ssl.eval.knn import knn_accuracy


def _pixels(loader, batch_transform) -> tuple[torch.Tensor, torch.Tensor]:
    return extract_features(torch.nn.Flatten(), loader, batch_transform=batch_transform)


def run(config: list[str], ckpt: str, ks: list[int], temperature: float = 0.07, device: str = "cpu",
        overrides: list[str] | None = None) -> dict:
    from lightning_ssl.cli import SSLCLI

    args = sum((["--config", c] for c in config), []) + list(overrides or []) + ["--trainer.logger=false"]
    cli = SSLCLI(args=args, run=False)
    dm = cli.datamodule
    dm.val_bank_size = None  # the whole labelled training set is the bank
    dm.prepare_data()
    dm.setup("validate")
    test_loader, bank_loader = dm.test_dataloader()
    num_classes = dm.num_classes

    rows = {}
    t0 = time.time()
    for name, model in [("learned (" + type(cli.model).__name__ + ")", load_method(ckpt)), ("random init", cli.model), ("raw pixels", None)]:
        t = time.time()
        if model is None:
            (qf, ql), (bf, bl) = _pixels(test_loader, dm.on_after_batch_transfer), _pixels(bank_loader, dm.on_after_batch_transfer)
        else:
            qf, ql = extract_features(model, test_loader, device, batch_transform=dm.on_after_batch_transfer)
            bf, bl = extract_features(model, bank_loader, device, batch_transform=dm.on_after_batch_transfer)
        acc = knn_accuracy(qf, ql, bf, bl, num_classes, ks, temperature)
        rows[name] = {"dim": qf.shape[1], **{f"k={k}": a for k, a in acc.items()}, "seconds": round(time.time() - t, 1)}
    header = "| representation | dim | " + " | ".join(f"kNN top-1, k={k}" for k in ks) + " |"
    lines = [header, "|" + "---|" * (len(ks) + 2)]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['dim']} | " + " | ".join(f"{100 * r[f'k={k}']:.2f}%" for k in ks) + " |")
    table = "\n".join(lines)
    print(f"\nkNN on {type(dm).__name__} test ({len(test_loader.dataset)} queries, bank of "
          f"{len(bank_loader.dataset)} training images, cosine, T={temperature}):\n\n{table}\n")
    out = Path(ckpt).with_name("knn_report.json")
    out.write_text(json.dumps({"rows": rows, "temperature": temperature, "seconds": round(time.time() - t0, 1)}, indent=2))
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="kNN report: learned vs random-init vs raw pixels")
    p.add_argument("--config", action="append", required=True, help="the config(s) used for pretraining")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--k", type=int, nargs="+", default=[20, 200])
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a, overrides = p.parse_known_args(argv)  # the rest: config overrides used for pretraining
    run(a.config, a.ckpt, a.k, a.temperature, a.device, overrides)


if __name__ == "__main__":
    main()
