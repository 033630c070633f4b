"""A config as ``lightning-ssl fit`` resolves it, reduced to the values a recipe is made of, without training and
without allocating the network (it is built on the meta device): tests/test_recipes.py compares them with the
reference recipes, tests/test_configs.py checks the full-size networks' structure with them.

Config headers carry the machine-readable part of a recipe:

    # reference: <repository> <file> (<what it is>)      or   # reference: none (<why>)
    # processes: 16                                        the per-process batch x this = the global batch
    # deviation: <key>: <reason>                           one line per value that differs from the reference
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.cli import LightningArgumentParser
from torch.overrides import TorchFunctionMode

from lightning_ssl.cli import SSLCLI
from lightning_ssl.config import import_class, to_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# training images per epoch of the standard sets (for warm-ups given in steps)
DATASET_SIZE = {"CIFAR10DataModule": 50_000, "STL10DataModule": 105_000, "ImageFolderDataModule": 1_281_167}
DATASET_SIZE["StreamingImageDataModule"] = DATASET_SIZE["ImageFolderDataModule"]
# methods whose constructors compute from data (colour bins, a pretrained text tower's weights): small, built for real
BUILT_ON_CPU = {"Colorization", "CLIP"}


@dataclass
class Header:
    reference: str
    processes: int = 1
    deviations: dict[str, str] = field(default_factory=dict)


def read_header(path: Path) -> Header | None:
    """The recipe lines of a config's leading comment block (None without a ``# reference:`` line)."""
    reference, processes, deviations = None, 1, {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if m := re.match(r"#\s*reference:\s*(.+)", line):
            reference = m.group(1).strip()
        elif m := re.match(r"#\s*processes:\s*(\d+)", line):
            processes = int(m.group(1))
        elif m := re.match(r"#\s*deviation:\s*([\w.]+):\s*(.+)", line):
            if m.group(1) in deviations:
                raise ValueError(f"{path.name}: deviation {m.group(1)!r} listed twice")
            deviations[m.group(1)] = m.group(2).strip()
    return Header(reference, processes, deviations) if reference else None


def image_size(path: Path) -> int | None:
    """The training image size of a training config (None for text and evaluation configs)."""
    cfg = yaml.safe_load(path.read_text())
    if "model" not in cfg or "data" not in cfg:
        return None
    data = cfg["data"]
    if not hasattr(import_class(data["class_path"]), "describe"):
        return (data.get("init_args") or {}).get("image_size")
    return import_class(data["class_path"]).describe(data.get("init_args") or {}).get("image_size")


class _ParseOnly(SSLCLI):
    def instantiate_classes(self) -> None:  # the config as the CLI resolves it, nothing built
        pass


def parse(path: Path, *overrides: str) -> Any:
    """The config's namespace after the CLI has parsed it and written the data's facts into the model."""
    return _ParseOnly(args=["--config", str(path), *overrides], run=False).config


def tiny_vit(patch_size: int, image_size: int) -> dict[str, Any]:
    return {
        "class_path": "lightning_ssl.modules.vit.ViT",
        "init_args": {"patch_size": patch_size, "image_size": image_size, "embed_dim": 16, "depth": 1, "num_heads": 2},
    }


def stand_ins(model: dict[str, Any]) -> dict[str, Any]:
    """Replace what a config loads from a checkpoint (BEiT's tokenizer, a VQ-KD teacher) by untrained tiny ViTs:
    they are not part of the recipe under test and no checkpoint exists here."""
    args = model["init_args"]
    backbone = args.get("backbone", {}).get("init_args", {})
    patch, size = backbone.get("patch_size", 16), backbone.get("image_size", 224)
    if isinstance(args.get("tokenizer"), str):
        args["tokenizer"] = {"class_path": f"{__name__}.StandInTokenizer", "init_args": {"patch_size": patch}}
    if (args.get("teacher") or {}).get("class_path", "").endswith("CheckpointBackbone"):
        args["teacher"] = tiny_vit(patch, size)
    return model


class StandInTokenizer(torch.nn.Module):
    """What BEiT needs of a tokenizer (``tokenize`` -> (B, h, w) ids, ``num_codes``), without weights: BEiT's
    ImageNet vocabulary of 8192 codes sizes its head as the real one does."""

    def __init__(self, patch_size: int = 16, num_codes: int = 8192) -> None:
        super().__init__()
        self.patch_size, self.num_codes = patch_size, num_codes

    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        return torch.zeros(len(images), h, w, dtype=torch.long, device=images.device)


class _MasksOnCPU(TorchFunctionMode):
    """Random draws and integer / boolean tensors (masks, indices) are made on the CPU; weights on the meta device.
    The constructors validate their mask settings by drawing one mask and reading it, which meta tensors cannot.
    In-place operations on meta tensors (weight initialisation) are skipped: they change no shape, and torch runs
    them through slow reference decompositions (a ViT-H's init would take seconds)."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        if (
            name.endswith("_")
            and not name.startswith("__")
            and name != "requires_grad_"
            and args
            and isinstance(args[0], torch.Tensor)
            and args[0].is_meta
        ):
            return args[0]
        kwargs = dict(kwargs or {})
        if func in _FACTORIES and kwargs.get("device") is None:
            dtype = kwargs.get("dtype")
            if (
                "generator" in kwargs
                or func in (torch.randint, torch.randperm)
                or (dtype is not None and not dtype.is_floating_point)
            ):
                kwargs["device"] = "cpu"
        return func(*args, **kwargs)


_FACTORIES = {torch.rand, torch.randn, torch.randint, torch.randperm, torch.zeros, torch.ones, torch.full}


def build_model(cfg: Any, device: str = "meta") -> L.LightningModule:
    """The config's LightningModule, built on ``device`` (meta: shapes only, no memory)."""
    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_lightning_class_args(L.LightningModule, "model", subclass_mode=True)
    model = stand_ins(json.loads(json.dumps(to_dict(cfg.model))))
    with torch.device(device), _MasksOnCPU():
        return parser.instantiate_classes(parser.parse_object({"model": model})).model


def _callback(cfg: Any, key: str, cls_path: str) -> Any:
    values = to_dict(cfg.get(key)) or {}
    return import_class(cls_path)(**values)


def _params_m(module: torch.nn.Module) -> float:
    return round(sum(p.numel() for p in module.parameters()) / 1e6, 2)


def _view_values(views: Any) -> dict[str, Any]:
    """Crops and colour augmentation of a ViewPreset, view by view (None where a view lacks the key)."""
    from dataclasses import asdict

    from lightning_ssl.data.transforms import ViewSpec

    per_view = [asdict(v if isinstance(v, ViewSpec) else ViewSpec(**v)) for v in views.views]
    out: dict[str, Any] = {}
    groups: list[list[Any]] = []
    for v in per_view:
        key = [v["size"], round(v["min_scale"], 4), round(v["max_scale"], 4)]
        if groups and groups[-1][1:] == key:
            groups[-1][0] += 1
        else:
            groups.append([1, *key])
    out["crops"] = " + ".join(f"{n}x{s or 'image'}[{lo}, {hi}]" for n, s, lo, hi in groups)
    jitter = []
    for v in per_view:
        s = v["jitter_strength"]
        jit = tuple(v["jitter"]) if v["jitter"] is not None else (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
        jitter.append(tuple(round(x, 4) for x in jit) if v["jitter_prob"] > 0 else None)
    out["jitter"] = jitter[0] if len(set(jitter)) == 1 else jitter
    for key in ("jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob", "flip_prob"):
        values = [round(float(v[key]), 4) for v in per_view]
        out[key] = values[0] if len(set(values)) == 1 else values
    return out


def resolve(path: Path, *overrides: str, reference_batch: int | None = None) -> dict[str, Any]:
    """The recipe of the config at ``path`` as the CLI resolves it, keyed as the tables of test_recipes.py are:
    the method's and backbone's arguments (``model.*``, ``backbone.*``), the optimizer's (``optimizer.*``), and the
    values a paper states (global batch, peak and final LR, warm-up epochs, weight decay and its end, LARS settings,
    gradient clipping, crops, parameter counts). With ``reference_batch``, the learning rates are those the config
    gives at that global batch (its scaling rule applied), so a recipe run at another batch compares rule for rule."""
    header = read_header(path) or Header("")
    cfg = parse(path, *overrides)
    out: dict[str, Any] = {}
    model_args = to_dict(cfg.model.init_args)
    out["method"] = cfg.model.class_path.rpartition(".")[2]
    for k, v in model_args.items():
        if isinstance(v, (int, float, str, bool, list, tuple)) or v is None:
            out[f"model.{k}"] = tuple(v) if isinstance(v, list) else v
    backbone = model_args.get("backbone") or {}
    out["backbone"] = str(backbone.get("class_path", "")).rpartition(".")[2]
    for k, v in (backbone.get("init_args") or {}).items():
        out[f"backbone.{k}"] = tuple(v) if isinstance(v, list) else v
    data = to_dict(cfg.data)
    data_args = data.get("init_args") or {}
    batch = int(data_args.get("batch_size") or 0)
    accumulate = int(cfg.trainer.get("accumulate_grad_batches") or 1)
    out["global_batch"] = global_batch = batch * header.processes * accumulate
    out["epochs"] = epochs = cfg.trainer.get("max_epochs")
    out["image_size"] = cfg.model.init_args.get("backbone", {}).get("init_args", {}).get("image_size")
    if data_args.get("views") is not None:
        views = import_class(data_args["views"]["class_path"])(**(data_args["views"].get("init_args") or {}))
        out.update(_view_values(views))
    clip = cfg.trainer.get("gradient_clip_val")
    per_param = model_args.get("clip_grad")
    out["grad_clip"] = f"global norm {clip:g}" if clip else f"per-parameter norm {per_param:g}" if per_param else None

    # the network, on the meta device: its size and the optimizer's groups come from the real code
    model = build_model(cfg, "cpu" if out["method"] in BUILT_ON_CPU else "meta")
    out["backbone_params_m"] = _params_m(model.backbone)
    out["trainable_params_m"] = round(
        sum(p.numel() for m in model.trainable_modules() for p in m.parameters() if p.requires_grad) / 1e6, 2
    )
    steps_per_epoch = max(
        1, DATASET_SIZE.get(data["class_path"].rpartition(".")[2], 100 * global_batch) // global_batch
    )
    stub = SimpleNamespace(
        datamodule=SimpleNamespace(batch_size=batch),
        world_size=header.processes,
        accumulate_grad_batches=accumulate,
        estimated_stepping_batches=steps_per_epoch * (epochs or 1),
        num_training_batches=steps_per_epoch * accumulate,
        max_epochs=epochs,
        global_step=0,
        current_epoch=0,
        train_dataloader=None,
    )
    model.trainer = stub
    for key, cls in (
        ("lr_scaling", "lightning_ssl.callbacks.LinearLRScaling"),
        ("param_groups", "lightning_ssl.callbacks.ParamGroups"),
        ("weight_decay_schedule", "lightning_ssl.callbacks.WeightDecaySchedule"),
    ):
        _callback(cfg, key, cls).setup(stub, model, "fit")
    scaling = (to_dict(cfg.get("lr_scaling")) or {}).get("base_batch_size")
    out["lr_scaling"] = (
        f"linear/{scaling}" if scaling else "linear/256" if model_args.get("base_lr") is not None else "none"
    )
    configured = model.configure_optimizers()
    optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
    scheduler = configured.get("lr_scheduler", {}).get("scheduler") if isinstance(configured, dict) else None
    out["optimizer"] = type(optimizer).__name__
    groups = optimizer.param_groups
    decayed = [g for g in groups if g.get("decayed", True)]
    plain = [g for g in groups if g.get("decayed") is False]
    peak = decayed[0].get("initial_lr", decayed[0]["lr"])
    # the LRs at the reference's global batch: the config's scaling rule (linear) decides how they move
    at_ref = reference_batch / global_batch if reference_batch and out["lr_scaling"] != "none" else 1.0
    peak *= at_ref
    out["lr"] = _r(peak)
    out["no_decay_lr"] = _r(plain[0].get("initial_lr", plain[0]["lr"]) * at_ref) if plain else None
    defaults = optimizer.defaults
    wd = model_args.get("weight_decay") if out["method"] == "DINO" else defaults.get("weight_decay", 0.0)
    out["weight_decay"] = _r(wd)
    wd_end = (
        model_args.get("weight_decay_end")
        if out["method"] == "DINO"
        else (to_dict(cfg.get("weight_decay_schedule")) or {}).get("end")
    )
    out["weight_decay_end"] = _r(wd_end) if wd_end is not None else None
    out["bias_norm_decay"] = bool(plain and plain[0]["weight_decay"] > 0) or not plain
    for key in ("betas", "momentum", "nesterov", "eps"):
        if key in defaults:
            out[f"optimizer.{key}"] = (
                tuple(defaults[key]) if isinstance(defaults[key], (list, tuple)) else defaults[key]
            )
    if out["optimizer"] == "Lars":
        out["lars.eta"] = defaults["trust_coeff"]
        out["lars.clip"] = defaults["trust_clip"]
        out["lars.exclude_bias_norm"] = bool(plain) and not plain[0]["always_adapt"] and plain[0]["weight_decay"] == 0
        out["lars.trust_ratio"] = "|w| / (|g| + wd |w|)"  # timm's Lars
    # the library's parameter groups: every 2-D+ tensor (CLS / mask tokens, position tables too) is decayed, and one
    # schedule drives every group
    out["token_weight_decay"] = "decayed" if out["backbone"] == "ViT" else None
    out["predictor_lr"] = "scheduled"
    tokenizer = model_args.get("tokenizer")
    out["tokenizer"] = "VisualTokenizer checkpoint" if isinstance(tokenizer, str) else None
    teacher = model_args.get("teacher")
    out["teacher"] = str(teacher.get("class_path")).rpartition(".")[2] if isinstance(teacher, dict) else None
    if scheduler is not None and hasattr(scheduler, "warmup_steps"):
        out["warmup_epochs"] = round(scheduler.warmup_steps / steps_per_epoch, 2)
        out["final_lr"] = _r(peak * scheduler.min_lr_ratio)
        start = scheduler.warmup_start_ratio
        out["warmup_start_lr"] = _r(peak * start) if start is not None else None
        out["schedule"] = "warmup + cosine"
    else:
        out["schedule"] = type(scheduler).__name__ if scheduler is not None else "constant"
    if hasattr(model, "momentum"):
        out["ema"] = (model.momentum, model.momentum_end)
        out["ema_schedule"] = (
            "constant"
            if model.momentum == model.momentum_end
            else "linear"
            if type(model).current_momentum is not _base_current_momentum()
            else "cosine"
        )
    return out


def _base_current_momentum() -> Any:
    from lightning_ssl.methods.base import MomentumMethod

    return MomentumMethod.current_momentum


def _r(x: float | None) -> float | None:
    """Round to 6 significant digits (what a recipe states; float noise of the scaling aside)."""
    if x is None or x == 0:
        return x
    return round(float(x), -math.floor(math.log10(abs(x))) + 5)
