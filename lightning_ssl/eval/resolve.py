"""What an evaluation stands for: the config it was given (the same short names as ``lightning-ssl fit``, a
training config meaning "its newest run") and the feature cache's key (the backbone's weights by content).

A feature cache keyed by a path string returns stale features when the file behind the path changes (``last.ckpt``
after more training, a config root whose newest run moved on). The key here names every weights file or folder
the backbone reads by its content (sha256), with the backbone's and the data's settings (transforms, image size,
normalization), the precision and the device type, so the cache is reused exactly when the features would be
the same.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from lightning_ssl import runs
from lightning_ssl.checkpoint import content_sha256

CACHE_VERSION = 2  # bump when what a cached file holds changes


def _weights(value: Any) -> Any:
    """``value`` with every local file or folder it names replaced by ``{"path", "sha256"}`` of its content (a run
    directory or a config's root: of the checkpoint it stands for now)."""
    if isinstance(value, dict):
        return {k: _weights(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_weights(v) for v in value]
    if not isinstance(value, str) or not value or not os.path.exists(value):
        return value
    path = value
    if os.path.isdir(path):
        with contextlib.suppress(FileNotFoundError):  # a plain folder (a Hugging Face model): its files
            path = runs.resolve_checkpoint(path)
    return {"path": os.path.abspath(path), "sha256": content_sha256(path)}


def feature_cache_key(backbone: dict, data: dict, precision: str, device: str) -> tuple[str, dict]:
    """(key, what it covers) of the features of ``backbone`` (its config, every weights file by content) on
    ``data`` (its config: dataset, transforms, size, normalization) at ``precision`` on ``device`` (a type:
    cpu, cuda)."""
    parts = {
        "version": CACHE_VERSION,
        "backbone": _weights(backbone),
        "data": data,
        "precision": precision,
        "device": device,
    }
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16], parts


def eval_config(name: str) -> str:
    """A ``--config`` value for ``lightning-ssl-eval``: a file, or a config shipped with the package named as for
    ``lightning-ssl fit`` (``eval/fashion_mnist``, ``configs/eval/fashion_mnist.yaml``). A training config
    (``simclr/fashion_mnist``: it has a ``model``) stands for the backbone of its newest run
    (``CheckpointBackbone`` of its ``trainer.default_root_dir``) on its data: returned as that evaluation config."""
    from lightning_ssl.console import find_config

    path = find_config(name)
    try:
        cfg = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return path  # the parser says what is wrong with it
    if not isinstance(cfg, dict) or "model" not in cfg:
        return path
    model = cfg.get("model") or {}
    method = str(model.get("class_path", "model") if isinstance(model, dict) else "model").rpartition(".")[2]
    root = (cfg.get("trainer") or {}).get("default_root_dir") or str(Path("outputs") / method.lower())
    derived = {
        "backbone": {"class_path": "lightning_ssl.modules.pretrained.CheckpointBackbone", "init_args": {"path": root}},
        "data": cfg.get("data"),
    }
    print(f"{name}: a training config; evaluating the backbone of its newest run under {root} on its data")
    return json.dumps(derived)


def with_eval_configs(argv: list[str]) -> list[str]:
    """``argv`` with each ``--config`` value resolved by ``eval_config``."""
    out = list(argv)
    for i, a in enumerate(out):
        if a == "--config" and i + 1 < len(out):
            out[i + 1] = eval_config(out[i + 1])
        elif a.startswith("--config="):
            out[i] = "--config=" + eval_config(a.split("=", 1)[1])
    return out
