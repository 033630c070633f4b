"""``lightning_ssl.load``: a trained run back in one line, however it was built (CLI or Python).

    model, backbone, transform = lightning_ssl.load("outputs/simclr/version_0")
    features = backbone(transform("image.png")[None])  # (1, D): the image prepared as in training's evaluation

The method is rebuilt from the checkpoint's hyperparameters (``load_method``, ``weights_only=True``), the backbone
is the network its ``embed`` uses (DINO's and I-JEPA's EMA teacher by default), and the transform is the
evaluation preprocessing the run trained with (``lightning_ssl.data.preprocessing.Preprocessing``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
from torch import nn

from lightning_ssl.checkpoint import CheckpointError, load_method
from lightning_ssl.data.preprocessing import Preprocessing
from lightning_ssl.runs import resolve_checkpoint


class Loaded(NamedTuple):
    """What ``load`` returns; unpacks as ``module, backbone, transform``.

    Args:
        module: the method (a LightningModule) with the checkpoint's weights, in eval mode.
        backbone: the network ``module.embed`` runs, images (B, C, H, W) -> (B, D), in eval mode.
        transform: the run's evaluation preprocessing: an image path, PIL image or uint8 (C, H, W) -> float
            (C, S, S); None when the checkpoint records none (trained without an image datamodule).
    """

    module: L.LightningModule
    backbone: nn.Module
    transform: Preprocessing | None


def load(path: str | os.PathLike, weights: str = "auto", map_location: str = "cpu") -> Loaded:
    """Load a run of this library: a checkpoint file, a run folder (``outputs/simclr/version_0``: its last
    checkpoint) or a config's output root (its newest run).

    Args:
        path: checkpoint file, run folder or output root.
        weights: which backbone to return: ``auto`` (the one ``embed`` uses), ``student`` or ``teacher``.
        map_location: device the weights are loaded onto.

    Returns:
        ``Loaded(module, backbone, transform)``.
    """
    if weights not in ("auto", "student", "teacher"):
        raise ValueError(f"weights must be 'auto', 'student' or 'teacher', got {weights!r}")
    ckpt = Path(resolve_checkpoint(str(path)))
    module = load_method(ckpt, map_location).eval()
    teacher = getattr(module, "teacher_backbone", None)
    if weights == "teacher" and teacher is None:
        raise CheckpointError(f"{type(module).__name__} in {str(ckpt)!r} has no teacher backbone")
    use_teacher = teacher is not None and (
        weights == "teacher" or (weights == "auto" and module.hparams.get("eval_teacher"))
    )
    backbone = teacher if use_teacher and teacher is not None else module.backbone
    record = getattr(module, "preprocessing_record", None) or preprocessing_from_run(ckpt)
    return Loaded(module, backbone.eval(), Preprocessing.from_dict(record) if record else None)


def preprocessing_from_run(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """The preprocessing of a checkpoint written without the record (older runs): rebuilt from the run folder's
    ``config.yaml`` (its datamodule's ``preprocessing()``), or None when there is no usable one."""
    config = Path(checkpoint).resolve().parent.parent / "config.yaml"
    if not config.is_file():
        return None
    import yaml
    from jsonargparse import ArgumentParser

    data = (yaml.safe_load(config.read_text()) or {}).get("data")
    if not isinstance(data, dict):
        return None
    try:
        parser = ArgumentParser(exit_on_error=False)
        parser.add_subclass_arguments(L.LightningDataModule, "data", fail_untyped=False)
        dm = parser.instantiate(parser.parse_object({"data": data})).data
        return dm.preprocessing().to_dict() if callable(getattr(dm, "preprocessing", None)) else None
    except Exception:  # a datamodule that needs its files (band statistics) or an option gone since: no record
        return None
