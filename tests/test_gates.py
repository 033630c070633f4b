"""``make lint``, the pre-commit hooks and the pinned versions agree: a commit is checked by the same tools, at the
same versions, as CI checks it."""

import re
from importlib.metadata import version
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
GATES = ("ruff", "mypy", "pre-commit")


def _pins() -> dict[str, str]:
    lines = (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
    return dict(re.match(r"([\w.-]+)==([\w.]+)", line).groups() for line in lines if re.match(r"[\w.-]+==", line))


def _lint_recipe() -> list[str]:
    """The commands of the Makefile's ``lint`` target, with ``$(VENV)`` as ``.venv``."""
    lines = (ROOT / "Makefile").read_text().split("\nlint:", 1)[1].splitlines()[1:]
    recipe = lines[: next((i for i, line in enumerate(lines) if not line.startswith("\t")), len(lines))]
    return [line.strip().replace("$(VENV)", ".venv") for line in recipe]


def test_the_gates_are_pinned_and_installed_at_their_pins():
    pins = _pins()
    for tool in GATES:
        assert tool in pins, f"pin {tool} in requirements/constraints.txt"
        assert version(tool) == pins[tool], f"{tool} {version(tool)} is installed, the constraints pin {pins[tool]}"


def test_pre_commit_runs_what_make_lint_runs():
    hooks = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())["repos"][0]["hooks"]
    assert [h["entry"] for h in hooks] == _lint_recipe()
    assert all(h["language"] == "system" for h in hooks)  # the project's .venv: the pinned versions
    assert _lint_recipe() == [".venv/bin/ruff format --check .", ".venv/bin/ruff check .", ".venv/bin/mypy"]
