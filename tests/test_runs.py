"""Every fit gets its own run directory; ``--ckpt_path last`` resumes the newest run of *this* model config; a
checkpoint of another architecture is refused with an error naming the tensors."""

import csv

import lightning as L
import pytest

from lightning_ssl import runs
from lightning_ssl.checkpoint import CheckpointError
from lightning_ssl.cli import cli
from lightning_ssl.data import SyntheticDataModule
from lightning_ssl.methods import SimCLR
from lightning_ssl.modules.backbones import SmallCNN


def args(root, width=4, epochs=1, extra=()):
    return [
        "fit",
        "--model=SimCLR",
        "--model.backbone=lightning_ssl.modules.backbones.SmallCNN",
        f"--model.backbone.width={width}",
        "--model.proj_hidden_dim=16",
        "--model.proj_dim=8",
        "--data=SyntheticDataModule",
        "--data.num_samples=32",
        "--data.batch_size=16",
        "--data.num_workers=0",
        "--data.image_size=8",
        "--data.channels=1",
        f"--trainer.max_epochs={epochs}",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={root}",
        *extra,
    ]


def test_runs_get_their_own_directories_and_last_means_this_configs_run(tmp_path):
    root = tmp_path / "outputs" / "simclr"
    cli(args(root))  # version_0: the original
    cli(args(root, width=8))  # version_1: a variant from the same config
    assert [p.name for p in runs.versions(root)] == ["version_0", "version_1"]
    for v in runs.versions(root):
        assert (v / "config.yaml").exists()
        assert (v / "checkpoints" / "last.ckpt").exists()
        assert (v / "metrics.csv").exists()  # the default logger writes into the run, not into a shared folder
    assert "width: 8" in (root / "version_1" / "config.yaml").read_text()
    assert "width: 4" in (root / "version_0" / "config.yaml").read_text()

    c = cli(args(root, width=4, epochs=2, extra=["--ckpt_path=last"]))  # resumes the original, not the newer variant
    assert c.trainer.current_epoch == 2
    assert c.trainer.default_root_dir.endswith("version_0")
    assert len(runs.versions(root)) == 2  # no new directory for a resumed run
    rows = list(csv.DictReader((root / "version_0" / "metrics.csv").read_text().splitlines()))
    assert {r["epoch"] for r in rows} >= {"0", "1"}  # the resumed run kept logging where it started

    with pytest.raises(ValueError, match=r"no run under .* this model config .*width: 16 here, 8 in the run"):
        cli(args(root, width=16, epochs=2, extra=["--ckpt_path=last"]))
    assert runs.latest_checkpoint(root) == root / "version_1" / "checkpoints" / "last.ckpt"


def test_fit_ends_by_saying_where_the_run_is_and_what_to_run_next(tmp_path, capsys):
    import shlex

    from lightning_ssl.eval.cli import build_parser
    from lightning_ssl.eval.resolve import with_eval_configs

    root = tmp_path / "outputs" / "simclr"
    cli(args(root))
    lines = capsys.readouterr().out.splitlines()
    run, ckpt = root / "version_0", root / "version_0" / "checkpoints" / "last.ckpt"
    assert f"run folder:      {run}" in lines
    assert f"last checkpoint: {ckpt}" in lines
    (command,) = [line.split(":", 1)[1].split("   (")[0] for line in lines if line.startswith("evaluate it:")]
    argv = shlex.split(command)
    assert argv[:4] == ["lightning-ssl-eval", "knn", "--config", str(run / "config.yaml")]
    # a command the evaluation CLI takes: this run's backbone, on the data exactly as it was trained
    cfg = build_parser().parse_args(with_eval_configs(argv[1:])).knn
    assert cfg.backbone.init_args.path == str(ckpt)
    assert cfg.data.class_path.endswith("SyntheticDataModule")
    assert (cfg.data.init_args.num_samples, cfg.data.init_args.image_size) == (32, 8)


def test_last_with_nothing_to_resume_starts_a_new_run(tmp_path):
    with pytest.warns(UserWarning, match="nothing to resume"):
        c = cli(args(tmp_path / "fresh", epochs=1, extra=["--ckpt_path=last"]))
    assert c.trainer.global_step == 2
    assert (tmp_path / "fresh" / "version_0" / "checkpoints" / "last.ckpt").exists()


def test_explicit_checkpoint_overrides_are_reported(tmp_path):
    root = tmp_path / "r"
    cli(args(root, width=8))
    with pytest.warns(
        UserWarning, match=r"rebuilt from the checkpoint's hyperparameters.*width: 4 here, 8 in the checkpoint"
    ):
        cli(args(root, width=4, epochs=2, extra=[f"--ckpt_path={root / 'version_0' / 'checkpoints' / 'last.ckpt'}"]))


def test_a_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    root = tmp_path / "r"
    cli(args(root, width=8))
    ckpt = root / "version_0" / "checkpoints" / "last.ckpt"
    dm = SyntheticDataModule(num_samples=32, batch_size=16, num_workers=0, image_size=8, channels=1)
    model = SimCLR(SmallCNN(1, 8, width=4), proj_hidden_dim=16, proj_dim=8)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(
        CheckpointError,
        match=r"(?s)another architecture.*backbone.features.0.weight: "
        r"the file has \(8, 1, 3, 3\), this run \(4, 1, 3, 3\)",
    ):
        trainer.fit(model, dm, ckpt_path=str(ckpt))
