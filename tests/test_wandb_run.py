"""A short fit with configs/shared/wandb.yaml in offline mode writes what a dashboard shows, read back from the
run's own files: metrics (losses, LR, kNN/probe, the collapse monitors), the whole resolved config and nothing
else, the run name and tags, and one labelled picture of each kind (augmented views, the method's pictures, the
embedding plot), all on one step axis."""

from pathlib import Path

from lightning_ssl import runs
from lightning_ssl.cli import cli
from lightning_ssl.loggers import read_wandb_run

ROOT = Path(__file__).resolve().parents[1]


def test_offline_wandb_run_records_metrics_config_and_pictures(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    root = tmp_path / "mae_run"
    cli(
        [
            "fit",
            "--config",
            str(ROOT / "configs/mae/fashion_mnist.yaml"),
            "--config",
            str(ROOT / "configs/shared/wandb.yaml"),
            "--data=lightning_ssl.data.SyntheticDataModule",
            "--data.image_size=28",
            "--data.channels=1",
            "--data.num_classes=4",
            "--data.num_samples=48",
            "--data.batch_size=16",
            "--data.num_workers=0",
            "--data.views=lightning_ssl.data.ClassifierViews",
            "--data.batch_augment=true",
            "--model.init_args.backbone.init_args.depth=1",
            "--model.init_args.backbone.init_args.embed_dim=24",
            "--trainer.max_epochs=1",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={root}",
        ]
    )
    run_dir = runs.versions(root)[-1]
    run = read_wandb_run(run_dir)
    keys = set().union(*run["history"])
    # the config logs every 20 steps and validates every 5 epochs; a 3-step, 1-epoch run still records both
    assert run["finished"]  # fit returned after the service wrote the run's exit record
    assert {"train/loss", "val/knn_top1", "val/probe_top1", "trainer/global_step"} <= keys
    assert any(k.startswith("lr-") for k in keys)  # the learning rate
    assert run["name"] == "mae_run/version_0"
    assert set(run["tags"]) == {"MAE", "SyntheticDataModule"}
    config = run["config"]["config"]  # the whole resolved config, not only the model's hyperparameters
    assert config["data"]["init_args"]["batch_size"] == 16
    assert config["trainer"]["max_epochs"] == 1
    assert config["seed_everything"] == 0
    assert config["data"]["init_args"]["views"]["class_path"].endswith("ClassifierViews")
    assert "_instantiator" not in run["config"]  # LightningCLI's rebuild hook is not a setting of the run
    # the collapse monitors, although the run (3 steps) is shorter than their interval (64): first and last step
    collapse = [r for r in run["history"] if "train/embedding_std" in r]
    assert [r["trainer/global_step"] for r in collapse] == [0, 2]
    assert all("train/rankme" in r for r in collapse)
    # one step axis: every panel is plotted against trainer/global_step, and the pictures are logged at the steps
    # (and epochs) Lightning logs the metrics of the same moment under
    assert run["step_metrics"]["*"] == "trainer/global_step"
    (loss,) = [r for r in run["history"] if "train/loss" in r]
    assert loss["trainer/global_step"] == 2  # Lightning logs the 3rd (last) step as step 2
    pictures = [r for r in run["history"] if any(k.startswith("images/") for k in r)]
    steps = {k.split("/")[1]: r["trainer/global_step"] for r in pictures for k in r if k.endswith("/count")}
    assert steps == {"views": 0, "mae_reconstruction": 2, "embeddings": 2}  # the first step; the last step
    assert all(r["epoch"] == loss["epoch"] for r in pictures)  # not "epoch 1" once training has ended
    for row in pictures:  # large enough to read (28-px images: the bare grid was 88 x 233)
        ((key, width),) = [(k, v) for k, v in row.items() if k.endswith("/width")]
        assert min(width, row[key.replace("width", "height")]) >= 300, row
    names = {Path(p).name.split("_")[0] for p in run["images"]}
    assert {"views", "mae", "embeddings"} <= names, run["images"]
    assert {p.name for p in (run_dir / "images").glob("*.png")} >= {"views_epoch000.png", "embeddings_epoch000.png"}
    assert (run_dir / "config.yaml").exists()
    assert not (tmp_path / "config.yaml").exists()
