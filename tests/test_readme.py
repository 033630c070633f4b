"""The README's code runs as written. The Python quickstart is read from README.md, its training schedule is
shortened by exact substitutions (each must apply once, so the test notices when the README changes), executed.
Every ``lightning-ssl fit`` line of the CLI quickstart is parsed by the CLI as written (``--print_config`` added
where the line would train). The two commands (``make demo``, ``make test``) are what CI runs."""

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest
import torch

from lightning_ssl.cli import cli

README = Path(__file__).resolve().parents[1] / "README.md"
SHORTER = {  # what the test changes, and nothing else
    "Trainer(max_epochs=20, ": "Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, logger=False, "
    "enable_checkpointing=False, enable_progress_bar=False, ",
    "FashionMNISTDataModule(batch_size=256, ": "FashionMNISTDataModule(batch_size=8, num_workers=0, ",
    'evaluation_tensors("test", max_images=1000)': 'evaluation_tensors("test", max_images=64)',
}


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


def test_readme_notebook_snippet_runs(tmp_path, monkeypatch):
    code = notebook_block()
    for old, new in SHORTER.items():
        assert code.count(old) == 1, f"the README snippet changed: {old!r} not found once"
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["images"].shape == (64, 1, 28, 28)
    assert ns["images"].dtype == torch.float32
    assert ns["features"].shape == (64, 512)
    assert ns["labels"].shape == (64,)
    assert abs(float(ns["images"].mean())) < 0.5  # normalized, not uint8 / [0, 1]
    model = ns["model"]
    assert model.training  # encode restored the mode it found
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(ns["features"][:8], model.embed(ns["images"][:8]))
