"""The examples in the docs run: every ``>>>`` example in a docstring of the package and in the site's Markdown
pages (docs/**/*.md) and README.md is executed with doctest (``make doctest`` runs this file)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import lightning_ssl

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ("_build", "_generated", "jupyter_execute", "tutorials/notebooks")
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def modules_with_examples() -> list[str]:
    names = []
    finder = doctest.DocTestFinder()
    for m in pkgutil.walk_packages(lightning_ssl.__path__, "lightning_ssl."):
        module = importlib.import_module(m.name)
        if any(t.examples for t in finder.find(module, module=module)):
            names.append(m.name)
    return sorted(names)


def pages() -> list[Path]:
    found = sorted((ROOT / "docs").rglob("*.md"))
    found = [p for p in found if not any(g in p.relative_to(ROOT / "docs").as_posix() for g in GENERATED)]
    return [ROOT / "README.md", *found]


MODULES = modules_with_examples()


def test_docstrings_have_examples():
    assert {"lightning_ssl.losses.info_nce", "lightning_ssl.modules.momentum"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    failed, attempted = doctest.testmod(module, optionflags=FLAGS, verbose=False, report=True)
    assert attempted > 0
    assert failed == 0, f"{failed} of {attempted} examples in {name} failed (see the output above)"


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_page_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes files writes them here
    # a code fence ends an example's expected output (blank lines keep the line numbers)
    text = re.sub(r"^\s*(```|:::).*$", "", page.read_text(encoding="utf-8"), flags=re.M)
    test = doctest.DocTestParser().get_doctest(text, {}, page.name, str(page), 0)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    runner.run(test)
    assert runner.failures == 0, f"{runner.failures} of {runner.tries} examples in {page.name} failed (see above)"
