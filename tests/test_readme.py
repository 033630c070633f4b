"""The README's notebook snippet runs as written: the block is read from README.md, its training schedule is
shortened by exact substitutions (each must apply once, so the test notices when the README changes), executed."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"
SHORTER = {  # what the test changes, and nothing else
    "Trainer(max_epochs=20, ": "Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, logger=False, "
    "enable_checkpointing=False, enable_progress_bar=False, ",
    "FashionMNISTDataModule(batch_size=256, ": "FashionMNISTDataModule(batch_size=8, num_workers=0, ",
    'evaluation_tensors("test", max_images=1000)': 'evaluation_tensors("test", max_images=64)',
}


def notebook_block() -> str:
    text = README.read_text()
    section = text[text.index("### In a notebook") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


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
