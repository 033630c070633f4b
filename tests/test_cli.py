import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_ssl.checkpoint import load_method
from lightning_ssl.cli import cli
from lightning_ssl.methods import SimCLR

ROOT = Path(__file__).resolve().parents[1]


def tiny_args(tmp_path, *extra):
    return [
        "--model=SimCLR",
        "--model.backbone=lightning_ssl.modules.backbones.SmallCNN",
        "--model.backbone.init_args.width=4",
        "--model.proj_hidden_dim=16",
        "--model.proj_dim=8",
        "--data=SyntheticDataModule",
        "--data.num_samples=32",
        "--data.batch_size=8",
        "--data.num_workers=0",
        "--data.image_size=16",
        "--data.channels=1",
        "--data.num_classes=4",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp_path}",
        f"--checkpoint.dirpath={tmp_path}/ckpt",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.save_dir={tmp_path}",
        *extra,
    ]


def test_print_config_works():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightning_ssl.cli",
            "fit",
            "--config",
            "configs/simclr/fashion_mnist.yaml",
            "--print_config",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "not recommended to provide both args and command line" not in out.stderr  # the entry point passes one
    assert "class_path: lightning_ssl.methods.SimCLR" in out.stdout
    assert "class_path: lightning_ssl.data.FashionMNISTDataModule" in out.stdout
    assert "knn:" in out.stdout
    # what will run: Fashion-MNIST's 1 channel and 28 px are already in the backbone (not SmallCNN's defaults)
    assert "in_channels: 1" in out.stdout
    assert "image_size: 28" in out.stdout
    assert "in_channels: 3" not in out.stdout


def test_console_script_exit_code_and_help():
    exe = Path(sys.executable).with_name("lightning-ssl")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert "fit" in out.stdout
    assert "validate" in out.stdout


def test_fit_resume_and_reload(tmp_path):
    c = cli(["fit", *tiny_args(tmp_path, "--trainer.max_epochs=2")])
    model = c.model
    assert model.backbone.in_channels == 1
    assert model.backbone.image_size == 16
    saved = (tmp_path / "lightning_logs" / "version_0" / "config.yaml").read_text()
    assert "in_channels: 1" in saved
    assert "image_size: 16" in saved
    last = tmp_path / "ckpt" / "last.ckpt"
    assert last.exists()
    rows = list(csv.DictReader((tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()))
    knn = [float(r["val/knn_top1"]) for r in rows if r.get("val/knn_top1")]
    assert len(knn) == 2
    assert all(0.0 <= a <= 1.0 for a in knn)
    assert any(r.get("val/probe_top1") for r in rows)

    reloaded = load_method(last)
    assert isinstance(reloaded, SimCLR)
    for (k, a), b in zip(model.state_dict().items(), reloaded.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)

    c2 = cli(["fit", *tiny_args(tmp_path, "--trainer.max_epochs=3"), "--ckpt_path=last"])
    assert c2.trainer.current_epoch == 3
    assert c2.trainer.global_step == 3 * 4


def test_simclr_loss_decreases_and_embed_excludes_projector(tmp_path):
    c = cli(
        [
            "fit",
            *tiny_args(
                tmp_path,
                "--trainer.max_epochs=6",
                "--model.optimizer=torch.optim.Adam",
                "--model.optimizer.lr=0.01",
                "--knn.every_n_epochs=0",
                "--trainer.log_every_n_steps=1",
            ),
        ]
    )
    rows = list(csv.DictReader((tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    x = torch.randn(3, 1, 16, 16)
    c.model.eval()
    assert c.model.embed(x).shape == (3, c.model.backbone.num_features)


def test_bad_hyperparameter_from_cli_names_it(tmp_path):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        cli(["fit", *tiny_args(tmp_path, "--model.temperature=0")])


def test_model_value_contradicting_the_data_is_an_error(tmp_path):
    args = [a for a in tiny_args(tmp_path) if not a.startswith("--data.channels")]
    with pytest.raises(ValueError, match=r"backbone.init_args.in_channels=1 contradicts data .*channels=3"):
        cli([*args, "--data.channels=3", "--model.backbone.init_args.in_channels=1"], run=False)
    # the constructor's default (3) is not a choice: the data's value (1) is filled in
    c = cli([*args, "--data.channels=1"], run=False)
    assert c.model.backbone.in_channels == 1


@pytest.mark.parametrize("flag", ["--optimizer=torch.optim.Adam", "--lr_scheduler=torch.optim.lr_scheduler.StepLR"])
def test_top_level_optimizer_is_refused_naming_the_right_key(tmp_path, flag):
    extra = ["--lr_scheduler.step_size=1"] if "StepLR" in flag else []
    with pytest.raises(ValueError, match=r"model.init_args.(optimizer|scheduler) instead"):
        cli([*tiny_args(tmp_path), flag, *extra], run=False)


def test_lr_scaling_with_the_global_batch(tmp_path):
    args = [a for a in tiny_args(tmp_path) if not a.startswith("--model=")]
    base = [
        "--model=SimCLR",
        "--model.optimizer=torch.optim.AdamW",
        "--model.optimizer.lr=0.001",
        "--trainer.max_steps=1",
        "--knn.every_n_epochs=0",
    ]
    c = cli(["fit", *base, *args, "--lr_scaling.base_batch_size=4", "--trainer.accumulate_grad_batches=2"])
    # batch 8 x 1 process x 2 accumulated = 16 images per step: 4x the rate given per 4 images
    assert c.trainer.optimizers[0].param_groups[0]["initial_lr"] == pytest.approx(0.004)
    c = cli(["fit", *base, *args, f"--trainer.default_root_dir={tmp_path}/plain"])
    assert c.trainer.optimizers[0].param_groups[0]["initial_lr"] == pytest.approx(0.001)  # off by default


def test_configs_ship_with_the_package_and_are_listed(tmp_path, monkeypatch, capsys):
    from lightning_ssl.cli import PACKAGED_CONFIGS, list_configs, main

    names = {n for n, _ in list_configs()}
    assert {
        p.relative_to(ROOT / "configs").with_suffix("").as_posix() for p in (ROOT / "configs").glob("*/*.yaml")
    } == names
    monkeypatch.chdir(tmp_path)  # no configs/ folder here, as after a pip install
    monkeypatch.setattr(sys, "argv", ["lightning-ssl", "configs"])
    main()
    out = capsys.readouterr().out
    assert "simclr/fashion_mnist" in out
    assert str(PACKAGED_CONFIGS) in out
    listing = [line for line in out.splitlines() if line.startswith("aim/imagenet ")]
    assert len(listing) == 1
    assert listing[0].endswith(" ...")  # a long first sentence, cut to one line
    monkeypatch.setenv("COLUMNS", "130")
    main()
    rows = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in rows if line.startswith(tuple(names))) <= 130
    c = cli(
        [
            "--config",
            "simclr/fashion_mnist",
            "--data=SyntheticDataModule",
            "--data.image_size=28",
            "--data.channels=1",
            "--trainer.logger=false",
        ],
        run=False,
    )
    assert type(c.model).__name__ == "SimCLR"
    c = cli(
        [
            "--config=configs/mae/fashion_mnist.yaml",
            "--data=SyntheticDataModule",
            "--data.image_size=28",
            "--data.channels=1",
            "--trainer.logger=false",
        ],
        run=False,
    )
    assert type(c.model).__name__ == "MAE"
