"""``lightning-ssl-eval``: evaluate a frozen backbone - from a checkpoint of this library, timm, torchvision,
Hugging Face, or raw pixels - with kNN, a linear probe, few-shot probes and embedding plots; export backbones.

    lightning-ssl-eval knn     --backbone CheckpointBackbone --backbone.path last.ckpt --data FashionMNISTDataModule
    lightning-ssl-eval linear  --config configs/eval/fashion_mnist.yaml --backbone.path last.ckpt
    lightning-ssl-eval fewshot --config configs/eval/fashion_mnist.yaml --shots [1,5,10,100] --seeds 5
    lightning-ssl-eval plot    --config configs/eval/fashion_mnist.yaml --method tsne
    lightning-ssl-eval retrieval --config configs/eval/fashion_mnist.yaml    # recall@k, MAP@R (kNN's features)
    lightning-ssl-eval all     --config configs/eval/fashion_mnist.yaml    # kNN, linear, few-shot, plot, retrieval
    lightning-ssl-eval attentive --config configs/eval/fashion_mnist.yaml    # attentive probe on patch tokens
    lightning-ssl-eval dense   --config configs/eval/fashion_mnist.yaml      # segmentation probe on item canvases
    lightning-ssl-eval export  --ckpt last.ckpt --out backbone.pt [--format state_dict|timm|hf]

Features of the labelled training split (the kNN bank / probe training set) and of the test split are computed
once per run, with a progress bar, and cached under ``out_dir/features`` (keyed by the backbone, its weights
file and the data config), so further protocols on the same backbone skip the forward passes; ``attentive`` and
``dense`` cache patch tokens / feature maps beside them (``lightning_ssl.eval.attentive``, ``.dense``). Results are
printed as tables, written to ``out_dir/<name>/results.json`` and logged to W&B (offline unless
``WANDB_MODE=online``; ``--wandb false`` turns it off). Fine-tuning is a training run:
``lightning-ssl fit --config configs/eval/finetune_fashion_mnist.yaml`` (``lightning_ssl.eval.Classifier``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from torch import nn

import lightning_ssl.data
import lightning_ssl.modules.backbones
import lightning_ssl.modules.pretrained  # noqa: F401
from lightning_ssl import runs
from lightning_ssl.config import DATA_TO_MODEL, import_class, inject, to_dict
from lightning_ssl.eval import attentive, dense
from lightning_ssl.eval.export import export_backbone
from lightning_ssl.eval.features import extract_features
from lightning_ssl.eval.linear import few_shot, few_shot_table, linear_probe
from lightning_ssl.metrics.knn import knn_accuracy
from lightning_ssl.metrics.plots import embedding_plot
from lightning_ssl.metrics.retrieval import retrieval_metrics, retrieval_table
from lightning_ssl.precision import auto_precision

# protocols on patch tokens / feature maps, with features and data of their own: name -> (options, run)
PATCH_PROTOCOLS = {"attentive": (attentive.AttentiveOptions, attentive.run), "dense": (dense.DenseOptions, dense.run)}
PROTOCOLS = ("knn", "linear", "fewshot", "plot", "retrieval", "all", *PATCH_PROTOCOLS)


def _feature_parser(name: str) -> ArgumentParser:
    p = ArgumentParser(description=f"{name}: evaluate a frozen backbone")
    p.add_argument("--config", action=ActionConfigFile)
    p.add_subclass_arguments(nn.Module, "backbone", required=True, help="the backbone (its embed/forward gives (B, D))")
    p.add_subclass_arguments(L.LightningDataModule, "data", required=True, help="a labelled image datamodule")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--precision",
        default="32",
        choices=["32", "bf16", "auto"],
        help="feature extraction; auto: bf16 where the device has native bf16, else 32",
    )
    p.add_argument("--out_dir", default="outputs/eval")
    p.add_argument("--name", type=str | None, default=None, help="run name (default: derived from the backbone)")
    p.add_argument("--cache_features", type=bool, default=True)
    p.add_argument("--wandb", type=bool, default=True)
    p.add_argument("--wandb_project", default="lightning-ssl-eval")
    # every subcommand takes every protocol's options, so one config file serves them all
    p.add_argument("--k", type=list[int], default=[10, 20, 100, 200], help="kNN: neighbour counts")
    p.add_argument("--temperature", type=float, default=0.07, help="kNN: vote temperature")
    p.add_argument("--epochs", type=int, default=100, help="linear / few-shot probe epochs")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight_decay", type=float, default=1e-4)
    p.add_argument("--batch_size", type=int, default=1024)
    p.add_argument("--shots", type=list[int], default=[1, 5, 10, 100], help="few-shot: examples per class")
    p.add_argument("--seeds", type=int, default=5, help="few-shot: draws per number of shots")
    p.add_argument("--method", default="tsne", choices=["tsne", "umap"], help="plot: 2-D embedding method")
    p.add_argument("--max_points", type=int, default=2000, help="plot: points drawn")
    p.add_argument("--recall_k", type=list[int], default=[1, 5, 10], help="retrieval: the k of recall@k")
    for name, (options, _) in PATCH_PROTOCOLS.items():
        p.add_class_arguments(options, name, help=f"{name}: see {options.__module__}.{options.__name__}")
    return p


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="lightning-ssl-eval", description=__doc__.splitlines()[0])
    sub = parser.add_subcommands(dest="subcommand")
    for name in PROTOCOLS:
        sub.add_subcommand(name, _feature_parser(name))
    exp = ArgumentParser(description="export: write a checkpoint's backbone as a plain state dict")
    exp.add_argument("--ckpt", required=True)
    exp.add_argument("--out", required=True)
    exp.add_argument(
        "--weights",
        default="auto",
        choices=["auto", "student", "teacher"],
        help="auto: the network the method's embed() uses (DINO: the EMA teacher)",
    )
    exp.add_argument(
        "--format",
        default="state_dict",
        choices=["state_dict", "timm", "hf"],
        help="state_dict: a .pt (+ .json recipe); timm / hf: a folder timm or transformers loads alone",
    )
    sub.add_subcommand("export", exp)
    return parser


def _device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def _cache_key(cfg: Namespace) -> str:
    backbone = to_dict(cfg.backbone)
    stamp = []
    for v in to_dict(backbone.get("init_args")).values():  # a weights file: include its identity
        if isinstance(v, str) and os.path.isdir(v):  # a run directory or root: the checkpoint it stands for now
            try:
                v = runs.resolve_checkpoint(v)
            except FileNotFoundError:
                continue
        if isinstance(v, str) and os.path.isfile(v):
            st = os.stat(v)
            stamp.append([os.path.abspath(v), st.st_size, st.st_mtime_ns])
    blob = json.dumps([backbone, to_dict(cfg.data), stamp], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def compute_features(backbone: nn.Module, dm, device: torch.device, precision: str = "32", cache: Path | None = None):
    """(train features, train labels, test features, test labels) of the labelled splits, cached in ``cache``."""
    if cache is not None and cache.exists():
        d = torch.load(cache, weights_only=True)
        print(f"features: reusing {cache}")
        return d["train_f"], d["train_y"], d["test_f"], d["test_y"]
    dm.val_bank_size = None
    dm.prepare_data()
    dm.setup("validate")
    test_loader, train_loader = dm.test_dataloader()
    if precision == "auto":
        precision = "bf16" if auto_precision(device.type)[0].startswith("bf16") else "32"
    kw = dict(
        device=device,
        precision="bf16" if precision == "bf16" else None,
        progress=True,
        batch_transform=dm.on_after_batch_transfer,
    )
    train_f, train_y = extract_features(backbone, train_loader, **kw)
    test_f, test_y = extract_features(backbone, test_loader, **kw)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp")
        torch.save({"train_f": train_f, "train_y": train_y, "test_f": test_f, "test_y": test_y}, tmp)
        tmp.replace(cache)
    return train_f, train_y, test_f, test_y


def run_protocols(subcommand: str, cfg: Namespace) -> dict[str, Any]:
    """Parse-free entry point: ``cfg`` is the subcommand's namespace. Returns the results dict."""
    data_cls = import_class(cfg.data.class_path)
    if hasattr(data_cls, "describe"):
        info = data_cls.describe(to_dict(cfg.data.get("init_args")))
        inject(
            cfg.backbone,
            {DATA_TO_MODEL[k]: v for k, v in info.items()},
            source=f"data ({cfg.data.class_path})",
            prefix="backbone.",
        )
    parser = _feature_parser(subcommand)
    init = parser.instantiate_classes(cfg)
    backbone, dm = init.backbone, init.data
    name = cfg.name or f"{type(backbone).__name__}-{_cache_key(cfg)[:8]}"
    out = Path(cfg.out_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    device = _device(cfg.device)
    num_classes = getattr(dm, "num_classes", None)
    results: dict[str, Any] = {
        "name": name,
        "backbone": to_dict(cfg.backbone),
        "data": to_dict(cfg.data),
        "seconds": {},
    }

    if subcommand in PATCH_PROTOCOLS:
        t = time.time()
        stem = Path(cfg.out_dir) / "features" / _cache_key(cfg) if cfg.cache_features else None
        section, lines, metrics = PATCH_PROTOCOLS[subcommand][1](
            backbone, dm, init[subcommand], device, cfg.precision, stem
        )
        results[subcommand] = section
        results["seconds"][subcommand] = round(time.time() - t, 1)
        _report(cfg, name, out, results, metrics, [f"## {name}", *lines])
        return results

    t = time.time()
    cache = Path(cfg.out_dir) / "features" / f"{_cache_key(cfg)}.pt" if cfg.cache_features else None
    train_f, train_y, test_f, test_y = compute_features(backbone, dm, device, cfg.precision, cache)
    results["seconds"]["features"] = round(time.time() - t, 1)
    results["feature_dim"], results["train_size"], results["test_size"] = train_f.shape[1], len(train_y), len(test_y)
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    metrics: dict[str, float] = {}
    text: list[str] = [f"## {name}: {train_f.shape[1]}-d features, {len(train_y)} train / {len(test_y)} test images"]

    if subcommand in ("knn", "all"):
        t = time.time()
        acc = knn_accuracy(test_f, test_y, train_f, train_y, num_classes, cfg.k, cfg.temperature)
        results["knn"] = {f"k={k}": a for k, a in acc.items()}
        results["seconds"]["knn"] = round(time.time() - t, 1)
        metrics.update({f"eval/knn_top1_k{k}": a for k, a in acc.items()})
        text += ["", f"kNN (cosine, T={cfg.temperature}):", "", "| k | top-1 |", "|---|---|"]
        text += [f"| {k} | {100 * a:.2f}% |" for k, a in acc.items()]
    probe_kw = {}
    if subcommand in ("linear", "fewshot", "all"):
        probe_kw = dict(epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, batch_size=cfg.batch_size)
    if subcommand in ("linear", "all"):
        t = time.time()
        acc = linear_probe(train_f, train_y, test_f, test_y, num_classes, progress=True, **probe_kw)
        results["linear"] = acc
        results["seconds"]["linear"] = round(time.time() - t, 1)
        metrics.update({"eval/linear_top1": acc["top1"], "eval/linear_top5": acc["top5"]})
        text += [
            "",
            f"Linear probe ({cfg.epochs} epochs): top-1 {100 * acc['top1']:.2f}%, top-5 {100 * acc['top5']:.2f}%",
        ]
    if subcommand in ("fewshot", "all"):
        t = time.time()
        fs = few_shot(train_f, train_y, test_f, test_y, cfg.shots, cfg.seeds, num_classes, **probe_kw)
        results["fewshot"] = {str(n): r for n, r in fs.items()}
        results["seconds"]["fewshot"] = round(time.time() - t, 1)
        metrics.update({f"eval/fewshot{n}_top1": r["mean"] for n, r in fs.items()})
        text += ["", f"Few-shot linear probe ({cfg.seeds} draws per row):", "", few_shot_table(fs)]
    plot_path = None
    if subcommand in ("plot", "all"):
        t = time.time()
        plot_path = embedding_plot(
            test_f,
            test_y,
            out / f"{cfg.method}.png",
            cfg.method,
            cfg.max_points,
            class_names=getattr(dm, "class_names", None),
            title=f"{name}: {cfg.method.upper()}",
        )
        results["plot"] = str(plot_path)
        results["seconds"]["plot"] = round(time.time() - t, 1)
        text += ["", f"Embedding plot: {plot_path}"]
    if subcommand in ("retrieval", "all"):
        t = time.time()
        results["retrieval"] = retrieval_metrics(test_f, test_y, cfg.recall_k)
        results["seconds"]["retrieval"] = round(time.time() - t, 1)
        metrics.update({f"eval/retrieval_{k}": v for k, v in results["retrieval"].items() if k != "queries"})
        text += ["", f"Image retrieval on the test set (cosine, each image queries the other {len(test_y) - 1}):"]
        text += ["", retrieval_table(results["retrieval"])]
    _report(cfg, name, out, results, metrics, text, plot_path)
    return results


def _report(
    cfg: Namespace,
    name: str,
    out: Path,
    results: dict[str, Any],
    metrics: dict[str, float],
    text: list[str],
    plot_path: Path | None = None,
) -> None:
    """Print the tables, merge the results into results.json and log them to W&B."""
    print("\n".join(text) + "\n")
    _write_results(out / "results.json", results)
    if cfg.wandb:
        from lightning_ssl.loggers import WandbLogger

        logger = WandbLogger(project=cfg.wandb_project, save_dir=cfg.out_dir, name=name)
        logger.log_hyperparams({"backbone": results["backbone"], "data": results["data"]})
        logger.log_metrics(metrics)
        if plot_path is not None:
            logger.log_image("eval/embedding_plot", [str(plot_path)])
        if "fewshot" in results:
            logger.log_table(
                "eval/fewshot",
                columns=["shots", "mean", "std"],
                data=[[int(n), r["mean"], r["std"]] for n, r in results["fewshot"].items()],
            )
        logger.experiment.finish()


def _write_results(path: Path, results: dict[str, Any]) -> None:
    """Merge ``results`` into ``path``: each protocol keeps its latest numbers, earlier protocols stay (a ``knn``
    then a ``linear`` run leave both); written atomically."""
    merged: dict[str, Any] = {}
    if path.exists():
        try:
            merged = json.loads(path.read_text())
        except json.JSONDecodeError:
            merged = {}
    seconds = {**merged.get("seconds", {}), **results.get("seconds", {})}
    merged.update(results)
    merged["seconds"] = seconds
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(merged, indent=2, default=str))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Run a subcommand. Called with ``argv`` (from Python) it returns the results dict; as the
    ``lightning-ssl-eval`` console script (``argv=None``) it returns None, so the exit status is 0 on success
    (the results are printed as tables and written to results.json)."""
    os.environ.setdefault("WANDB_SILENT", "true")
    parser = build_parser()
    cfg = parser.parse_args(argv if argv is not None else sys.argv[1:])
    if cfg.subcommand == "export":
        out = export_backbone(cfg.export.ckpt, cfg.export.out, cfg.export.weights, cfg.export.format)
        meta = out.with_suffix(".json") if cfg.export.format == "state_dict" else out / "lightning_ssl.json"
        print(f"wrote {out} ({cfg.export.format}); load it with:\n\n{json.loads(meta.read_text())['how_to_load']}")
        return None
    results = run_protocols(cfg.subcommand, cfg[cfg.subcommand])
    return results if argv is not None else None


if __name__ == "__main__":
    main()
