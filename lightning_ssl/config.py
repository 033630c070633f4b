"""Helpers for class-path configs (``class_path`` + ``init_args``), shared by the CLIs, checkpoints and methods:
import a class by its dotted path, and write the datamodule's facts (image size, channels, classes) into every
component of a model config that takes them."""

from __future__ import annotations

import importlib
from typing import Any

from jsonargparse import Namespace

DATA_TO_MODEL = {"image_size": "image_size", "channels": "in_channels", "num_classes": "num_classes"}


def import_class(class_path: str) -> Any:
    """``"package.module.Name"`` -> the object ``Name`` of that module."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def to_dict(ns: Any) -> dict:
    return ns.as_dict() if isinstance(ns, Namespace) else dict(ns or {})


def inject(config: Namespace, values: dict[str, Any]) -> list[str]:
    """Set ``values`` on every class config (``class_path`` + ``init_args``) in ``config`` whose init_args
    has the key (recursively). Returns the dotted keys that were set."""
    done: list[str] = []

    def walk(ns: Any, prefix: str) -> None:
        if isinstance(ns, Namespace) and "class_path" in ns and isinstance(ns.get("init_args"), Namespace):
            init = ns.init_args
            for key, value in values.items():
                if value is not None and key in vars(init):
                    init[key] = value
                    done.append(f"{prefix}init_args.{key}")
            for key, value in vars(init).items():  # top-level entries (keys() would be flattened)
                walk(value, f"{prefix}init_args.{key}.")
        elif isinstance(ns, (list, tuple)):
            for i, item in enumerate(ns):
                walk(item, f"{prefix}{i}.")

    walk(config, "")
    return done
