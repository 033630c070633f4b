"""The README's code runs as written. The Python quickstart is the one of docs/guides/python_quickstart.md
(tests/test_quickstart.py runs it).
Every ``lightning-ssl fit`` line of the CLI quickstart is parsed by the CLI as written (``--print_config`` added
where the line would train). The two commands (``make demo``, ``make test``) are what CI runs."""

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from lightning_ssl.cli import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def block(heading: str, language: str) -> str:
    text = README.read_text()
    section = text[text.index(heading) :]
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1)


def notebook_block() -> str:
    return block("## Python quickstart", "python")


def cli_lines() -> list[list[str]]:
    lines = [line.split("  #")[0].strip() for line in block("## CLI quickstart", "bash").splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("lightning-ssl fit")]


def test_readme_has_cli_lines():
    assert len(cli_lines()) >= 4


@pytest.mark.parametrize("args", cli_lines(), ids=lambda a: " ".join(a[-2:]))
def test_readme_cli_line_parses(args, tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the configs are named relative to the repository
    if not any(a in ("--print_config", "--model.help") for a in args):
        args = [*args, "--print_config"]  # parse and validate everything the run would use, then stop
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli(args)
    assert exit_info.value.code == 0
    assert "model" in out.getvalue() or "Help for --model.help" in out.getvalue()


def test_readme_python_quickstart_is_the_tested_one():
    """The README's Python block is the quickstart guide's, which tests/test_quickstart.py runs as written."""
    guide = (README.parent / "docs" / "guides" / "python_quickstart.md").read_text()
    assert notebook_block() == re.search(r"```python\n(.*?)```", guide, re.S).group(1)
