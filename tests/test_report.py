import json

import pytest

from lightning_ssl.cli import cli
from lightning_ssl.eval import report


def test_report_on_synthetic_data(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(f"""
seed_everything: 1
model:
  class_path: lightning_ssl.methods.SimCLR
  init_args:
    backbone: {{class_path: lightning_ssl.modules.backbones.SmallCNN, init_args: {{width: 4}}}}
    proj_hidden_dim: 16
    proj_dim: 8
data:
  class_path: lightning_ssl.data.SyntheticDataModule
  init_args: {{num_samples: 64, num_classes: 4, image_size: 16, channels: 1, batch_size: 16, num_workers: 0,
              batch_augment: true, noise: 0.1}}
trainer: {{max_epochs: 1, accelerator: cpu, logger: false, enable_progress_bar: false,
          default_root_dir: {tmp_path}}}
checkpoint: {{dirpath: {tmp_path}/ckpt}}
""")
    cli(["fit", "--config", str(cfg)])
    rows = report.run([str(cfg)], str(tmp_path / "ckpt" / "last.ckpt"), ks=[1, 5])
    assert list(rows) == ["learned (SimCLR)", "random init (same architecture)", "raw pixels"]
    assert rows["raw pixels"]["dim"] == 256
    assert rows["learned (SimCLR)"]["dim"] == 16
    assert rows["raw pixels"]["k=1"] == pytest.approx(1.0)  # the class patterns are far apart in pixel space
    assert rows["raw pixels"]["bank"] == 64
    assert rows["raw pixels"]["queries"] == 16
    saved = json.loads((tmp_path / "ckpt" / "knn_report.json").read_text())
    assert saved["rows"]["raw pixels"]["k=5"] == rows["raw pixels"]["k=5"]
    assert "| raw pixels | 256 | 100.00% |" in capsys.readouterr().out
