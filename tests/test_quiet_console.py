"""An ordinary ``lightning-ssl fit`` prints no warning the project could avoid.

The demo's command (the SimCLR demo config with the W&B config layered on, under a time budget) runs on a few
synthetic images in a subprocess, as a user runs it; each line of its console that looks like a warning, a
deprecation, an advertisement or an empty FLOPs column fails the test unless it is listed in ``EXPECTED`` with the
reason it cannot be avoided.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUSPECT = re.compile(r"(?i)warn|deprecat|tip:|flops|not supported|will be removed")
EXPECTED: list[tuple[str, str]] = [
    # (pattern, why it stays)
]


def test_a_demo_fit_prints_no_avoidable_warning(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    for key in ("LIGHTNING_SSL_DEBUG", "PYTHONWARNINGS"):
        env.pop(key, None)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightning_ssl.cli",
            "fit",
            "--config",
            "configs/simclr/fashion_mnist.yaml",
            "--config",
            "configs/shared/wandb.yaml",
            "--data=SyntheticDataModule",
            "--data.num_samples=64",
            "--data.batch_size=16",
            "--data.num_workers=0",
            "--data.image_size=28",
            "--data.channels=1",
            "--data.num_classes=4",
            "--budget.minutes=0.05",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    console = out.stdout + out.stderr
    assert out.returncode == 0, console[-3000:]
    assert "Trainable params" in console  # the summary is there, without its FLOPs column
    unexpected = [
        line
        for line in console.splitlines()
        if SUSPECT.search(line) and not any(re.search(p, line) for p, _ in EXPECTED)
    ]
    assert not unexpected, "\n".join(unexpected)


def test_the_check_catches_a_warning_line():
    line = "/x/lightning/pytorch/utilities/_pytree.py:21: FutureWarning: `isinstance(treespec, LeafSpec)` is deprecated"
    assert SUSPECT.search(line)
    assert SUSPECT.search("│ 0 │ backbone  │ SmallCNN       │ 72.0 K │ train │     0 │") is None  # a row is fine
    assert SUSPECT.search("Total FLOPs: 0")
