"""Modules that remember how they were built, so a method made in Python saves them as a small config.

A LightningCLI run records every component as ``{"class_path": ..., "init_args": {...}}``. A method built in
Python is handed objects instead; ``module_spec`` turns a ``Buildable`` module back into that config (from the
arguments its constructor was called with), so ``save_hyperparameters`` writes a few lines of YAML instead of a
pickled network, and ``load_from_checkpoint`` rebuilds it. Every backbone of the library is ``Buildable``; a
module class of your own becomes so by listing ``Buildable`` first among its bases::

    class MyNet(Buildable, nn.Module):
        def __init__(self, width: int = 64) -> None: ...

Modules that are not (``torchvision.models.resnet18()``, ``timm.create_model(...)``) cannot be rebuilt from
plain data: their weights are still in the checkpoint, and reloading takes the module again
(``SimCLR.load_from_checkpoint(path, backbone=torchvision.models.resnet18())``).
"""

from __future__ import annotations

import functools
import inspect
from pathlib import PurePath
from typing import Any


class Buildable:
    """Mixin that records the arguments a module's constructor was called with (see the module docstring).

    It keeps the call as given (``__new__`` sees the same arguments as ``__init__``), so it costs nothing and
    changes neither the constructor's signature nor its docstring (which LightningCLI reads)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        self = super().__new__(cls)
        self.__dict__["_init_call"] = (args, kwargs)  # before nn.Module.__init__: plain attribute, not a submodule
        return self


class NotPlain(ValueError):
    """A value that has no plain-data (YAML) form."""


def plain(value: Any) -> Any:
    """``value`` as plain data: numbers, strings, lists, string-keyed dicts; ``Buildable`` modules and classes
    (an optimizer class) as ``{"class_path", "init_args"}``; ``functools.partial`` of a class with plain keyword
    arguments likewise (``partial(torch.optim.SGD, lr=0.1)``); a module-level function as its import path.
    Raises ``NotPlain`` for anything else."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise NotPlain(f"a dict with non-string keys: {list(value)[:3]}")
        return {k: plain(v) for k, v in value.items()}
    if inspect.isclass(value):
        return _class_spec(value, {})
    if inspect.isfunction(value) and "<" not in value.__qualname__:  # a module-level function: its import path
        return _class_path(value)
    if isinstance(value, functools.partial) and inspect.isclass(value.func) and not value.args:
        return _class_spec(value.func, dict(value.keywords))
    spec = module_spec(value)
    if spec is None:
        raise NotPlain(f"{type(value).__module__}.{type(value).__qualname__} has no plain-data form")
    return spec


def plain_items(values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the entries of ``values`` that have a plain form, as plain data; the keys of those that have none)."""
    converted = {key: _plain_or_none(value) for key, value in values.items()}
    return {k: v[1] for k, v in converted.items() if v[0]}, [k for k, v in converted.items() if not v[0]]


def _plain_or_none(value: Any) -> tuple[bool, Any]:
    try:
        return True, plain(value)
    except NotPlain:
        return False, None


def module_spec(module: Any) -> dict[str, Any] | None:
    """``{"class_path": ..., "init_args": {...}}`` that rebuilds ``module`` (a ``Buildable`` one whose
    arguments are all plain data, nested ``Buildable`` modules included), else None."""
    call = getattr(module, "__dict__", {}).get("_init_call")
    if call is None:
        return None
    args, kwargs = call
    try:
        signature = inspect.signature(type(module).__init__)
        bound = signature.bind(module, *args, **kwargs)
        init_args: dict[str, Any] = {}
        for name, value in list(bound.arguments.items())[1:]:  # [0] is self
            kind = signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                return None  # *args have no name to put in a config
            if kind is inspect.Parameter.VAR_KEYWORD:
                init_args.update({k: plain(v) for k, v in value.items()})
            else:
                init_args[name] = plain(value)
    except (TypeError, NotPlain):
        return None
    return {"class_path": _class_path(type(module)), "init_args": init_args}


def _class_spec(cls: type, keywords: dict[str, Any]) -> dict[str, Any]:
    """A class called later with its leading arguments (an optimizer with the parameters): every defaulted
    argument written out, so reloading does not mix in another class's settings (jsonargparse keeps init_args
    that fit when a class_path replaces a default)."""
    try:
        params = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: the keywords given only
        params = []
    defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    init_args, _ = plain_items({**defaults, **keywords})
    return {"class_path": _class_path(cls), "init_args": init_args}


def _class_path(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"
