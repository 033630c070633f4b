"""Imports run one way: data / losses / modules / metrics (and the small utility modules) below methods /
callbacks / loggers, below eval and the CLIs. Every import in the package, including the ones inside functions,
is checked, so a lazy import cannot close a circle either."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_ssl"
LAYERS = {
    # 0: building blocks, no Lightning module or callback of ours
    "config": 0,
    "runs": 0,
    "checkpoint": 0,
    "optim": 0,
    "precision": 0,
    "data": 0,
    "losses": 0,
    "modules": 0,
    "metrics": 0,
    # 1: what a Trainer runs
    "methods": 1,
    "callbacks": 1,
    "loggers": 1,
    "trainer": 1,
    # 2: entry points
    "eval": 2,
    "cli": 2,
    "console": 2,
    "loading": 2,
}


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "lightning_ssl" and len(parts) > 1 else None


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.lineno, node.module)] + [
                (node.lineno, f"{node.module}.{a.name}") for a in node.names if node.module == "lightning_ssl"
            ]
    return out


FILES = sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_package_part_has_a_layer():
    parts = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in FILES} - {"__init__"}
    assert parts <= set(LAYERS), f"give these a layer in tests/test_layers.py: {sorted(parts - set(LAYERS))}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_points_up(path):
    own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    if own == "__init__":
        return
    bad = [
        f"line {line}: {mod}"
        for line, mod in _imports(path)
        if _part(mod) in LAYERS and LAYERS[_part(mod)] > LAYERS[own]
    ]
    assert not bad, f"{path.relative_to(PACKAGE)} (layer {LAYERS[own]}) imports from a higher layer: {bad}"


def test_the_check_catches_an_upward_import(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from lightning_ssl.cli import cli\n")
    assert [m for _, m in _imports(f) if LAYERS[_part(m)] > LAYERS["methods"]] == ["lightning_ssl.cli"]
