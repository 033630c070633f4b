"""Every YAML under configs/ (except the shared layers) runs one training and one validation batch on generated
data with the config's own image size, channels and number of classes."""

from pathlib import Path

import pytest
import yaml

from lightning_ssl.cli import _import, cli

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name != "shared")


def test_there_are_configs():
    assert len(CONFIGS) >= 2


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_config_fast_dev_run(config, tmp_path):
    data = yaml.safe_load(config.read_text())["data"]
    info = _import(data["class_path"]).describe(data.get("init_args") or {})
    cli([
        "fit", "--config", str(config),
        "--data=lightning_ssl.data.SyntheticDataModule", f"--data.image_size={info['image_size']}",
        f"--data.channels={info['channels']}", f"--data.num_classes={info['num_classes'] or 4}",
        "--data.num_samples=16", "--data.batch_size=4", "--data.num_workers=0",
        "--trainer.fast_dev_run=true", "--trainer.logger=false", "--trainer.accelerator=cpu",
        f"--trainer.default_root_dir={tmp_path}", f"--checkpoint.dirpath={tmp_path}/ckpt",
    ])
