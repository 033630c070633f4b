import os

from lightning_ssl.loggers import WandbLogger


def test_wandb_logger_is_offline_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("LIGHTNING_SSL_WANDB", raising=False)
    logger = WandbLogger(save_dir=str(tmp_path), project="test")
    logger.log_metrics({"train/loss": 1.0}, step=0)
    logger.experiment.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert any(runs[0].iterdir())


def test_wandb_online_when_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_SSL_WANDB", "online")
    logger = WandbLogger(save_dir=str(tmp_path), project="test")
    assert logger._offline is False  # not started: there is no network here
    monkeypatch.setenv("LIGHTNING_SSL_WANDB", "offline")
    assert WandbLogger(save_dir=str(tmp_path))._offline is True
    assert os.environ.get("WANDB_SILENT") == "true"
