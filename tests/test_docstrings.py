"""Every public class documents its constructor: each argument has a Google-style ``Args:`` entry (read with
docstring_parser, as jsonargparse reads it for ``--model.help``), and the CLI's help shows those descriptions."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import pkgutil

import docstring_parser
import pytest

import lightning_ssl
from lightning_ssl.cli import cli

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(lightning_ssl.__path__, "lightning_ssl.")
    if not any(part.startswith("_") for part in m.name.split(".")[1:])
)
SKIP_KINDS = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def public_classes() -> list[type]:
    """Every public class defined in a public module of the package (what the API reference lists)."""
    found = []
    for name in MODULES:
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if inspect.isclass(obj) and not attr.startswith("_") and obj.__module__ == name:
                found.append(obj)
    return found


def undocumented_arguments(cls: type) -> list[str]:
    """The constructor arguments of ``cls`` that its docstrings do not describe. The class that defines
    ``__init__`` (``cls`` or a base of the package) is the one whose class and ``__init__`` docstrings count."""
    owner = next(c for c in cls.__mro__ if "__init__" in vars(c))
    if not owner.__module__.startswith("lightning_ssl"):
        return []  # the constructor is a dependency's (Lightning, torch, NamedTuple): documented there
    params = [
        p.name for p in list(inspect.signature(owner.__init__).parameters.values())[1:] if p.kind not in SKIP_KINDS
    ]
    documented = set()
    for doc in (owner.__doc__, owner.__init__.__doc__):
        documented |= {p.arg_name for p in docstring_parser.parse(inspect.cleandoc(doc or "")).params}
    return [p for p in params if p not in documented]


def test_the_package_has_public_classes():
    classes = {c.__name__ for c in public_classes()}
    assert {"SimCLR", "DINO", "NTXentLoss", "SmallCNN", "FashionMNISTDataModule", "KNNMonitor"} <= classes


@pytest.mark.parametrize("cls", public_classes(), ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_every_constructor_argument_is_documented(cls):
    missing = undocumented_arguments(cls)
    assert not missing, f"{cls.__module__}.{cls.__qualname__}: add an Args: entry for {missing}"


def test_the_check_finds_an_undocumented_argument():
    class Documented:
        """A class.

        Args:
            width: Channels of the first layer.
        """

        def __init__(self, width: int, depth: int = 2) -> None: ...

    Documented.__module__ = "lightning_ssl.example"
    assert undocumented_arguments(Documented) == ["depth"]


def help_text(*args: str) -> str:
    """What ``lightning-ssl <args>`` prints, its lines joined with single spaces (the help wraps its text)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli(list(args))
    assert exit_info.value.code == 0
    return out.getvalue()


def words(text: str) -> str:
    return " ".join(text.split())


def test_model_help_shows_the_argument_descriptions():
    text = help_text("fit", "--model.help", "VICReg")
    flat = words(text)
    assert "Weight mu of the variance hinge (25 in the paper)" in flat
    assert "Target standard deviation of every embedding dimension" in flat
    # the backbone's type lists the project's backbones, not every nn.Module subclass in torch
    assert "lightning_ssl.modules.backbones.SmallCNN" in text
    assert "torch.nn.Linear" not in text
    assert len(text.splitlines()) < 150


def test_data_and_callback_help_show_the_argument_descriptions():
    data = words(help_text("fit", "--data.help", "FashionMNISTDataModule"))
    assert "Run the view transforms batched on the device after transfer" in data
    fit = words(help_text("fit", "--help"))  # the always-configured callbacks are top-level groups (knn:, probe:)
    assert "Temperature of the similarity-weighted votes" in fit
    assert "Train the probe every this many optimizer steps" in fit
