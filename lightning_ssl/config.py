"""Helpers for class-path configs (``class_path`` + ``init_args``), shared by the CLIs, checkpoints and methods:
import a class by its dotted path, and write the datamodule's facts (image size, channels, classes; a text corpus's
vocabulary and block size) into every component of a model config that takes them."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from jsonargparse import Namespace

DATA_TO_MODEL = {
    "image_size": "image_size",
    "channels": "in_channels",
    "num_classes": "num_classes",
    "vocab_size": "vocab_size",
    "block_size": "block_size",
}  # the last two: text corpora


def import_class(class_path: str) -> Any:
    """``"package.module.Name"`` -> the object ``Name`` of that module."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def to_dict(ns: Any) -> dict:
    return ns.as_dict() if isinstance(ns, Namespace) else dict(ns or {})


def _default(class_path: str, key: str) -> Any:
    """The constructor default of ``key`` for ``class_path`` (``inspect.Parameter.empty`` if unknown)."""
    try:
        return inspect.signature(import_class(class_path)).parameters[key].default
    except (ImportError, AttributeError, KeyError, TypeError, ValueError):
        return inspect.Parameter.empty


def inject(config: Namespace, values: dict[str, Any], source: str = "the data", prefix: str = "") -> list[str]:
    """Set ``values`` on every class config (``class_path`` + ``init_args``) in ``config`` whose init_args
    has the key (recursively). Returns the dotted keys that were set.

    A value the config already holds that is neither the constructor's default nor the new value was set on
    purpose and contradicts ``source``: that is an error naming both, never a silent overwrite."""
    done: list[str] = []
    names = {v: k for k, v in DATA_TO_MODEL.items()}

    def walk(ns: Any, prefix: str) -> None:
        if isinstance(ns, Namespace) and "class_path" in ns and isinstance(ns.get("init_args"), Namespace):
            init = ns.init_args
            for key, value in values.items():
                if value is not None and key in vars(init):
                    current = init[key]
                    if current is not None and current != value and current != _default(ns.class_path, key):
                        raise ValueError(
                            f"{prefix}init_args.{key}={current!r} contradicts {source}, which gives "
                            f"{names.get(key, key)}={value!r}. Leave the model's value out (the data's is filled in) "
                            f"or change the data's."
                        )
                    init[key] = value
                    done.append(f"{prefix}init_args.{key}")
            for key, value in vars(init).items():  # top-level entries (keys() would be flattened)
                walk(value, f"{prefix}init_args.{key}.")
        elif isinstance(ns, (list, tuple)):
            for i, item in enumerate(ns):
                walk(item, f"{prefix}{i}.")

    walk(config, prefix)
    return done
