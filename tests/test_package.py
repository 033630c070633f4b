"""Packaging facts a user relies on: one version string, and type information shipped with the package."""

import importlib.metadata
import re
from pathlib import Path

import lightning_ssl

ROOT = Path(__file__).resolve().parents[1]


def test_version_is_written_once_and_reported():
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.dev\d+|rc\d+)?", lightning_ssl.__version__)
    assert importlib.metadata.version("lightning-ssl") == lightning_ssl.__version__
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert not re.search(r"^version\s*=\s*\"", pyproject, re.MULTILINE)  # no second copy to drift


def test_changelog_has_an_unreleased_section():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in text
    released = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", text, re.MULTILINE)
    assert released, "no released version recorded"


def test_py_typed_ships_with_the_package():
    assert (Path(lightning_ssl.__file__).parent / "py.typed").exists()
    assert "py.typed" in (ROOT / "pyproject.toml").read_text()
