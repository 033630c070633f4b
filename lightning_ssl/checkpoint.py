"""Loading checkpoints and state dicts safely (never unpickling code) and with errors that say what is wrong."""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_ssl.runs import missing_path_hint


class CheckpointError(RuntimeError):
    """A checkpoint or weights file that cannot be used, with the reason in the message."""


def safe_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors, numbers, strings and containers only.

    Raises ``CheckpointError`` naming the file for a missing, truncated or corrupt file, or one that
    contains pickled code (classes, functions) which we refuse to execute."""
    path = Path(path)
    if not path.exists():
        hint = missing_path_hint(path)
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist" + (f"; {hint}" if hint else ""))
    if path.is_dir():
        raise CheckpointError(f"checkpoint path {str(path)!r} is a directory, expected a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint file {str(path)!r} is empty")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint file {str(path)!r} contains pickled Python objects that are not plain data "
            f"(refusing to execute them; weights_only=True): {str(e).splitlines()[0]}"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint file {str(path)!r} is truncated or corrupt: {e}") from e


def content_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, or of a folder's files (their relative names and contents, in sorted order): what
    a checkpoint or a model folder holds, whatever its name or time stamp.

    Args:
        path: a file or a folder.

    Returns:
        The hex digest (64 characters).
    """
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            digest.update(f"{f.relative_to(path)}\0{f.stat().st_size}\0".encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A plain ``{name: tensor}`` state dict from ``path``; accepts a Lightning checkpoint too (its
    ``state_dict``) and the common ``{"model": sd}`` / ``{"state_dict": sd}`` wrappers."""
    obj = safe_load(path)
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{str(path)!r} does not hold a state dict of tensors (got {type(obj).__name__})")
    return obj


def load_method(path: str | os.PathLike, map_location: str | torch.device = "cpu", **overrides: Any):
    """Rebuild the LightningModule saved in a checkpoint of this library (its class and constructor
    arguments are in the checkpoint's hyperparameters) and load its weights, with ``weights_only=True``.

    Runs built in Python reload alike (their backbone is recorded as a config, ``SSLMethod.save_hyperparameters``),
    except from a module that is not ``Buildable`` (``torchvision.models.resnet18()``): pass it again,
    ``load_method(path, backbone=torchvision.models.resnet18())``. ``lightning_ssl.load`` also returns the backbone
    and the evaluation transform."""
    import importlib

    ckpt = safe_load(path, map_location)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{str(path)!r} is not a Lightning checkpoint (no 'state_dict')")
    class_path = ckpt.get("hyper_parameters", {}).get("_class_path")
    if class_path is None:
        raise CheckpointError(
            f"{str(path)!r} does not record which method wrote it (no '_class_path' hyperparameter); "
            "load it with <MethodClass>.load_from_checkpoint(path, weights_only=True, ...) instead"
        )
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    return cls.load_from_checkpoint(path, map_location=map_location, weights_only=True, **overrides)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same directory, flushes it to disk and renames it over
    the target (``os.replace`` is atomic on POSIX): a process killed while saving leaves the previous file
    intact and at worst a stray ``.*.tmp`` file. Loads with ``weights_only=True`` (``safe_load``)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = True) -> dict[str, Any]:
        return safe_load(path, map_location or "cpu")
