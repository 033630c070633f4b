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
    lightning-ssl-eval export  --ckpt outputs/simclr/version_0 --out backbone.pt [--format state_dict|timm|hf|onnx]

Features of the labelled training split (the kNN bank / probe training set) and of the test split are computed
once per run, with a progress bar, and cached under ``out_dir/features`` (keyed by the backbone's settings and
its weights by content, the data config, the precision and the device type; ``lightning_ssl.eval.resolve``), so
further protocols on the same backbone skip the forward passes; ``attentive`` and ``dense`` cache patch tokens /
feature maps beside them (``lightning_ssl.eval.attentive``, ``.dense``). ``--config`` takes the short names
``lightning-ssl fit`` takes; a training config (``--config simclr/fashion_mnist``) evaluates its newest run's
backbone on its data. Results are printed as tables, written to ``out_dir/<name>/results.json`` and logged to
W&B (offline unless ``WANDB_MODE=online``; ``--wandb false`` turns it off). Fine-tuning is a training run:
``lightning-ssl fit --config configs/eval/finetune_fashion_mnist.yaml`` (``lightning_ssl.eval.Classifier``).

Each subcommand's ``--help`` shows its own options (``PROTOCOLS``: a protocol names the option groups of
``OPTIONS`` it uses); the other protocols' options are accepted too, unlisted, so one config file serves every
subcommand. A new protocol is one entry in each table and its block in ``run_protocols``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from argparse import SUPPRESS
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter, Namespace
from torch import nn

import lightning_ssl.data
import lightning_ssl.modules.backbones
import lightning_ssl.modules.pretrained  # noqa: F401
from lightning_ssl.config import DATA_TO_MODEL, import_class, inject, to_dict
from lightning_ssl.eval import attentive, dense
from lightning_ssl.eval.export import export_backbone
from lightning_ssl.eval.features import extract_features
from lightning_ssl.eval.linear import few_shot, few_shot_table, linear_probe
from lightning_ssl.eval.resolve import feature_cache_key, with_eval_configs
from lightning_ssl.metrics.knn import knn_accuracy
from lightning_ssl.metrics.plots import embedding_plot
from lightning_ssl.metrics.retrieval import retrieval_metrics, retrieval_table
from lightning_ssl.precision import auto_precision, limit_threads

DESCRIPTION = (
    "Evaluate a frozen backbone (a checkpoint of this library, a timm, torchvision or Hugging Face model, raw "
    "pixels) with kNN, a linear probe, few-shot probes and embedding plots, or export a checkpoint's backbone."
)
BACKBONE_HELP = (
    "the frozen backbone, images (B, C, H, W) -> (B, D): CheckpointBackbone (--backbone.path: a checkpoint, "
    "run folder or output root of this library), Pixels, TimmBackbone, TorchvisionBackbone, HFVisionBackbone, "
    "or any nn.Module class_path; --backbone.help CLASS lists a class's options"
)
DATA_HELP = (
    "a labelled image datamodule: FashionMNISTDataModule, MNISTDataModule, CIFAR10DataModule, "
    "ImageFolderDataModule (--data.train_dir / --data.val_dir), SyntheticDataModule, ...; "
    "--data.help CLASS lists a class's options"
)


def _knn_options(add: Callable[..., Any]) -> None:
    add("--k", type=list[int], default=[10, 20, 100, 200], help="kNN: neighbour counts, e.g. [20,200]")
    add("--temperature", type=float, default=0.07, help="kNN: temperature of the weighted votes")


def _probe_options(add: Callable[..., Any]) -> None:
    add("--epochs", type=int, default=100, help="linear / few-shot probe: epochs over the cached features")
    add("--lr", type=float, default=1e-3, help="linear / few-shot probe: AdamW learning rate")
    add("--weight_decay", type=float, default=1e-4, help="linear / few-shot probe: AdamW weight decay")
    add("--batch_size", type=int, default=1024, help="linear / few-shot probe: features per step")


def _fewshot_options(add: Callable[..., Any]) -> None:
    add("--shots", type=list[int], default=[1, 5, 10, 100], help="few-shot: labelled examples per class")
    add("--seeds", type=int, default=5, help="few-shot: random draws per number of shots (mean +- std)")


def _plot_options(add: Callable[..., Any]) -> None:
    add("--method", default="tsne", choices=["tsne", "umap"], help="plot: 2-D embedding method")
    add("--max_points", type=int, default=2000, help="plot: test images drawn")


def _retrieval_options(add: Callable[..., Any]) -> None:
    add("--recall_k", type=list[int], default=[1, 5, 10], help="retrieval: the k of recall@k")


OPTIONS: dict[str, Callable[[Callable[..., Any]], None]] = {
    "knn": _knn_options,
    "probe": _probe_options,
    "fewshot": _fewshot_options,
    "plot": _plot_options,
    "retrieval": _retrieval_options,
}
# protocols on patch tokens / feature maps, with features, data and an options class of their own (``--<name>.*``):
# name -> (options class, run)
PATCH_PROTOCOLS: dict[str, tuple[type, Callable[..., tuple[dict[str, Any], list[str], dict[str, float]]]]] = {
    "attentive": (attentive.AttentiveOptions, attentive.run),
    "dense": (dense.DenseOptions, dense.run),
}


@dataclass(frozen=True)
class Protocol:
    """A subcommand that evaluates a frozen backbone.

    Args:
        help: one line, listed by ``lightning-ssl-eval --help``.
        options: the ``OPTIONS`` groups its ``--help`` shows.
    """

    help: str
    options: tuple[str, ...]


PROTOCOLS: dict[str, Protocol] = {
    "knn": Protocol("weighted cosine kNN accuracy (top-1) for each k", ("knn",)),
    "linear": Protocol("linear probe on the frozen features: top-1 / top-5", ("probe",)),
    "fewshot": Protocol("linear probes on n labelled images per class, mean +- std over draws", ("probe", "fewshot")),
    "plot": Protocol("t-SNE / UMAP picture of the test features, coloured by class", ("plot",)),
    "retrieval": Protocol("image-to-image search on the test set: recall@k, R-precision, MAP@R", ("retrieval",)),
    "all": Protocol(
        "knn + linear + fewshot + plot + retrieval on one pass of features",
        ("knn", "probe", "fewshot", "plot", "retrieval"),
    ),
    "attentive": Protocol("attentive probe (cross-attention pooling) on frozen patch tokens / map cells", ()),
    "dense": Protocol("linear segmentation probe on frozen patch tokens / feature maps: mIoU, pixel accuracy", ()),
}


def _feature_parser(name: str) -> ArgumentParser:
    p = ArgumentParser(
        prog=f"lightning-ssl-eval {name}",
        description=f"{name}: {PROTOCOLS[name].help}",
        formatter_class=_Formatter,
        exit_on_error=False,
    )
    p.add_argument("--config", action=ActionConfigFile, help="a YAML with any of these options (configs/eval/)")
    p.add_subclass_arguments(nn.Module, "backbone", required=True, help=BACKBONE_HELP)
    p.add_subclass_arguments(L.LightningDataModule, "data", required=True, help=DATA_HELP)
    for key in ("backbone", "data"):  # jsonargparse titles the groups with the base classes' docstrings
        section = (p.groups or {}).get(key)
        if section is not None:
            section.title, section.description = key, None
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--precision",
        default="32",
        choices=["32", "bf16", "auto"],
        help="feature extraction; auto: bf16 where the device has native bf16, else 32",
    )
    p.add_argument("--out_dir", default="outputs/eval", help="results, cached features and plots go under it")
    p.add_argument("--name", type=str | None, default=None, help="run name (default: derived from the backbone)")
    p.add_argument("--cache_features", type=bool, default=True, help="reuse features computed by an earlier run")
    p.add_argument("--wandb", type=bool, default=True, help="log to W&B (offline unless WANDB_MODE=online)")
    p.add_argument("--wandb_project", default="lightning-ssl-eval", help="W&B project")
    shown = PROTOCOLS[name].options
    added: set[str] = set()
    for group in (*shown, *(g for g in OPTIONS if g not in shown)):  # this protocol's first: they keep their help

        def add(flag: str, *, visible: bool = group in shown, **kwargs: Any) -> None:
            if flag not in added:  # an option two groups share is added once
                added.add(flag)
                p.add_argument(flag, **(kwargs if visible else {**kwargs, "help": SUPPRESS}))

        OPTIONS[group](add)
    for group, (options, _) in PATCH_PROTOCOLS.items():
        before = len(p._actions)
        p.add_class_arguments(options, group, help=f"{group}: see {options.__module__}.{options.__name__}")
        if group != name:  # accepted (one config file serves every subcommand), not listed
            for action in p._actions[before:]:
                action.help = SUPPRESS
    return p


def _export_parser() -> ArgumentParser:
    from lightning_ssl.eval.export import FORMATS

    p = ArgumentParser(
        prog="lightning-ssl-eval export",
        description="export: write a checkpoint's backbone with its preprocessing, loadable without lightning_ssl",
        formatter_class=_Formatter,
        exit_on_error=False,
    )
    p.add_argument("--config", action=ActionConfigFile, help="a YAML with any of these options")
    p.add_argument("--ckpt", required=True, help="a checkpoint file, a run folder (its last.ckpt) or an output root")
    p.add_argument("--out", required=True, help="the file (state_dict, onnx) or folder (timm, hf) to write")
    p.add_argument(
        "--format",
        default="state_dict",
        help=f"{' | '.join(FORMATS)}: a .pt + .json; a folder for timm / transformers; an ONNX graph",
    )
    p.add_argument(
        "--weights",
        default="auto",
        choices=["auto", "student", "teacher"],
        help="auto: the network the method's embed() uses (DINO: the EMA teacher)",
    )
    p.add_argument("--mean", type=list[float] | None, default=None, help="override the recorded normalization mean")
    p.add_argument("--std", type=list[float] | None, default=None, help="override the recorded normalization std")
    p.add_argument("--image_size", type=int | None, default=None, help="override the recorded input size (px)")
    p.add_argument("--resize_size", type=int | None, default=None, help="override the short side before the crop")
    return p


SUBCOMMAND_HELP = {**{k: v.help for k, v in PROTOCOLS.items()}, "export": "a checkpoint's backbone for other code"}


def build_parser(only: str | None = None) -> ArgumentParser:
    """The ``lightning-ssl-eval`` parser; ``only``: with just that subcommand (a subcommand's ``--help`` and
    parsing need no other)."""
    parser = ArgumentParser(
        prog="lightning-ssl-eval",
        description=DESCRIPTION,
        epilog="A failure prints a short message; --debug (or LIGHTNING_SSL_DEBUG=1) shows its traceback.",
        formatter_class=_Formatter,
        exit_on_error=False,
    )
    sub = parser.add_subcommands(dest="subcommand")
    for name in [only] if only else [*PROTOCOLS, "export"]:
        sub.add_subcommand(
            name, _export_parser() if name == "export" else _feature_parser(name), help=SUBCOMMAND_HELP[name]
        )
    return parser


class _Formatter(DefaultHelpFormatter):
    """jsonargparse's help, without the list of every importable subclass of ``nn.Module`` /
    ``LightningDataModule`` (1,400 lines); the options' own help names the usual classes."""

    def _get_help_string(self, action: Any) -> str:
        return re.sub(r", known subclasses: [^)]*", "", super()._get_help_string(action))


def _device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def _cache_key(cfg: Namespace) -> str:
    """The feature cache's key: the backbone's weights by content and the settings (``resolve.feature_cache_key``)."""
    device = _device(cfg.device).type
    precision = str(cfg.precision)
    if precision == "auto":
        precision = "bf16" if auto_precision(device)[0].startswith("bf16") else "32"
    return feature_cache_key(to_dict(cfg.backbone), to_dict(cfg.data), precision, device)[0]


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
    init = parser.instantiate(cfg)
    backbone, dm = init.backbone, init.data
    print(f"threads: {limit_threads(int(getattr(dm, 'num_workers', 0) or 0))}")
    key = _cache_key(cfg)
    name = cfg.name or f"{type(backbone).__name__}-{key[:8]}"
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
        stem = Path(cfg.out_dir) / "features" / key if cfg.cache_features else None
        section, lines, patch_metrics = PATCH_PROTOCOLS[subcommand][1](
            backbone, dm, init[subcommand], device, cfg.precision, stem
        )
        results[subcommand] = section
        results["seconds"][subcommand] = round(time.time() - t, 1)
        _report(cfg, name, out, results, patch_metrics, [f"## {name}", *lines])
        return results

    t = time.time()
    cache = Path(cfg.out_dir) / "features" / f"{key}.pt" if cfg.cache_features else None
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
        linear = linear_probe(train_f, train_y, test_f, test_y, num_classes, progress=True, **probe_kw)
        results["linear"] = linear
        results["seconds"]["linear"] = round(time.time() - t, 1)
        metrics.update({"eval/linear_top1": linear["top1"], "eval/linear_top5": linear["top5"]})
        text += [
            "",
            f"Linear probe ({cfg.epochs} epochs): top-1 {100 * linear['top1']:.2f}%, top-5 {100 * linear['top5']:.2f}%",
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


def run(argv: list[str]) -> dict[str, Any] | None:
    """Parse ``argv`` and run its subcommand: the results dict of a protocol, None for ``export``."""
    os.environ.setdefault("WANDB_SILENT", "true")
    from lightning_ssl.console import UsageError, did_you_mean

    # --config: a file, a packaged config's short name (eval/fashion_mnist), or a training config (its newest run)
    argv = with_eval_configs(argv)
    names = [*PROTOCOLS, "export"]
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is not None and first not in names:
        raise UsageError(did_you_mean(first, names, "subcommand"))
    cfg = build_parser(first).parse_args(argv)
    if cfg.subcommand == "export":
        _export(cfg.export)
        return None
    return run_protocols(cfg.subcommand, cfg[cfg.subcommand])


def _export(cfg: Namespace) -> None:
    from lightning_ssl.console import UsageError, did_you_mean, missing_path_hint
    from lightning_ssl.eval.export import FORMATS

    if cfg.format not in FORMATS:
        raise UsageError(f"--format: {did_you_mean(cfg.format, FORMATS, 'format')}")
    if not Path(cfg.ckpt).exists():
        hint = missing_path_hint(cfg.ckpt)
        raise UsageError(f"--ckpt: {cfg.ckpt!r} does not exist" + (f"; {hint}" if hint else ""))
    fields = {k: cfg[k] for k in ("mean", "std", "image_size", "resize_size") if cfg[k] is not None}
    out = export_backbone(cfg.ckpt, cfg.out, cfg.weights, cfg.format, fields or None)
    meta = out.with_suffix(".json") if cfg.format in ("state_dict", "onnx") else out / "lightning_ssl.json"
    info = json.loads(meta.read_text())
    pre = info["preprocessing"]
    print(
        f"wrote {out} ({cfg.format}, {info['num_features']}-d features; preprocessing: {pre['channels']} channel(s), "
        f"{pre['image_size']} px, mean {pre['mean']}, std {pre['std']}); load it with:\n\n{info['how_to_load']}"
    )


def main(argv: list[str] | None = None) -> dict[str, Any] | int | None:
    """Run a subcommand. Called with ``argv`` (from Python) it returns the results dict and raises errors; as the
    ``lightning-ssl-eval`` console script (``argv=None``) a mistake ends with a short message and exit status 2
    (``lightning_ssl.console.eval_main``), success with 0 (the results are printed and written to results.json)."""
    if argv is None:
        from lightning_ssl.console import eval_main

        return eval_main()
    return run(argv)


if __name__ == "__main__":
    from lightning_ssl.console import eval_main

    sys.exit(eval_main())
