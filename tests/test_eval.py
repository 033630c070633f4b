import json
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_ssl.checkpoint import CheckpointError
from lightning_ssl.cli import cli
from lightning_ssl.eval import export_backbone, few_shot, linear_probe, sample_few_shot
from lightning_ssl.eval.cli import main as eval_main
from lightning_ssl.metrics.plots import embedding_plot
from lightning_ssl.modules.pretrained import CheckpointBackbone, load_weights


def separable(n=600, d=16, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, d, generator=g) * 4
    y = torch.arange(n) % classes
    return centers[y] + torch.randn(n, d, generator=g), y


def test_linear_probe_separable_and_random_labels():
    x, y = separable()
    acc = linear_probe(x[:400], y[:400], x[400:], y[400:], epochs=30)
    assert acc["top1"] == pytest.approx(1.0)
    assert acc["top5"] == pytest.approx(1.0)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(2000, 16, generator=g)
    y_rand = torch.randint(0, 4, (2000,), generator=g)
    acc = linear_probe(noise[:1500], y_rand[:1500], noise[1500:], y_rand[1500:], epochs=30)
    assert 0.15 < acc["top1"] < 0.35  # chance is 0.25


def test_few_shot_picks_exactly_n_per_class():
    y = torch.tensor([0] * 30 + [1] * 12 + [2] * 50)
    for n in (1, 5, 10):
        idx = sample_few_shot(y, n, seed=3)
        assert torch.bincount(y[idx], minlength=3).tolist() == [n, n, n]
        assert len(set(idx.tolist())) == 3 * n
    assert not torch.equal(sample_few_shot(y, 5, 0), sample_few_shot(y, 5, 1))
    with pytest.raises(ValueError, match="class 1 has 12 labelled examples"):
        sample_few_shot(y, 20, 0)


def test_few_shot_results():
    x, y = separable(n=800)
    res = few_shot(x[:600], y[:600], x[600:], y[600:], shots=(1, 10), seeds=3, epochs=20)
    assert set(res) == {1, 10}
    assert len(res[10]["runs"]) == 3
    assert res[10]["mean"] > 0.95
    assert res[10]["std"] >= 0


def test_embedding_plot(tmp_path):
    x, y = separable(n=120)
    path = embedding_plot(x, y, tmp_path / "tsne.png", class_names=["a", "b", "c", "d"])
    assert path.exists()
    assert path.stat().st_size > 5000


def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
    import matplotlib

    from lightning_ssl.metrics import clip_embedding_plot

    matplotlib.use("svg")  # a notebook's inline backend must survive a plot written to a file
    x, y = separable(n=40)
    embedding_plot(x, y, tmp_path / "a.png")
    clip_embedding_plot(x, x + 0.1, y, tmp_path / "b.png")
    assert matplotlib.get_backend() == "svg"
    assert (tmp_path / "b.png").stat().st_size > 5000


# --- export / load --------------------------------------------------------------------------------------------
def _pretrain(tmp_path, backbone_args):
    c = cli(
        [
            "fit",
            "--model=SimCLR",
            *backbone_args,
            "--model.proj_hidden_dim=16",
            "--model.proj_dim=8",
            "--data=SyntheticDataModule",
            "--data.num_samples=16",
            "--data.batch_size=8",
            "--data.num_workers=0",
            "--data.image_size=16",
            "--data.channels=1",
            "--trainer.max_steps=1",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--knn.every_n_epochs=0",
            "--trainer.limit_val_batches=0",
            f"--trainer.default_root_dir={tmp_path}",
            f"--checkpoint.dirpath={tmp_path}/ckpt",
        ]
    )
    return c.model.eval(), tmp_path / "ckpt" / "last.ckpt"


def test_export_resnet_loads_into_bare_torchvision(tmp_path):
    import torchvision

    model, ckpt = _pretrain(
        tmp_path, ["--model.backbone=lightning_ssl.modules.backbones.ResNet", "--model.backbone.arch=resnet18"]
    )
    out = export_backbone(str(ckpt), str(tmp_path / "r18.pt"))
    sd = torch.load(out, weights_only=True)
    assert not any(k.startswith(("backbone.", "net.")) for k in sd)
    bare = torchvision.models.resnet18()
    bare.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)  # the small-input stem, as the .json recipe says
    bare.maxpool, bare.fc = nn.Identity(), nn.Identity()
    bare.load_state_dict(sd)  # strict: no prefix surgery
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(bare.eval()(x), model.embed(x))
    meta = json.loads(out.with_suffix(".json").read_text())
    assert "model.conv1 = torch.nn.Conv2d(1, 64, 3, 1, 1, bias=False)" in meta["how_to_load"]
    again = CheckpointBackbone(str(out)).eval()
    torch.testing.assert_close(again(x), model.embed(x))
    from_ckpt = CheckpointBackbone(str(ckpt)).eval()
    torch.testing.assert_close(from_ckpt(x), model.embed(x))


def test_export_timm_loads_into_timm(tmp_path):
    import timm

    model, ckpt = _pretrain(tmp_path, ["--model.backbone=TimmBackbone", "--model.backbone.name=resnet10t"])
    out = export_backbone(str(ckpt), str(tmp_path / "t.pt"))
    bare = timm.create_model("resnet10t", num_classes=0, in_chans=1)
    bare.load_state_dict(torch.load(out, weights_only=True))
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(bare.eval()(x), model.embed(x))


def test_mismatched_and_unsafe_files_are_refused(tmp_path):
    from lightning_ssl.modules.backbones import ResNet

    _model, ckpt = _pretrain(
        tmp_path, ["--model.backbone=lightning_ssl.modules.backbones.ResNet", "--model.backbone.arch=resnet18"]
    )
    out = export_backbone(str(ckpt), str(tmp_path / "r18.pt"))
    big_stem = ResNet("resnet18", in_channels=1, image_size=224)
    with pytest.raises(
        CheckpointError, match=r"conv1.weight: file has shape \(64, 1, 3, 3\), the model expects \(64, 1, 7, 7\)"
    ):
        load_weights(big_stem.net, torch.load(out, weights_only=True), "r18.pt")
    prefixed = {f"module.{k}": v for k, v in big_stem.net.state_dict().items()}
    with pytest.raises(CheckpointError, match="a prefix to strip"):
        load_weights(big_stem.net, prefixed)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save(
        {"state_dict": {"backbone.x": torch.zeros(1)}, "hyper_parameters": {"x": Evil()}}, tmp_path / "evil.ckpt"
    )
    with pytest.raises(CheckpointError, match="refusing to execute"):
        CheckpointBackbone(str(tmp_path / "evil.ckpt"))
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(CheckpointError, match="neither a lightning_ssl checkpoint"):
        CheckpointBackbone(str(tmp_path / "plain.ckpt"))


# --- the evaluation CLI -----------------------------------------------------------------------------------------
def test_eval_cli_all_protocols_and_feature_cache(tmp_path, capsys):
    args = [
        "--backbone=Pixels",
        "--data=SyntheticDataModule",
        "--data.num_samples=80",
        "--data.num_classes=4",
        "--data.image_size=8",
        "--data.channels=1",
        "--data.num_workers=0",
        "--data.noise=0.1",
        f"--out_dir={tmp_path}",
        "--name=pixels",
        "--wandb=false",
    ]
    res = eval_main(["all", *args, "--k=[1,5]", "--shots=[1,5]", "--seeds=2", "--epochs=20", "--max_points=80"])
    assert res["feature_dim"] == 64
    assert res["train_size"] == 80
    assert res["test_size"] == 20
    assert res["knn"]["k=1"] == pytest.approx(1.0)
    assert res["linear"]["top1"] > 0.9
    assert set(res["fewshot"]) == {"1", "5"}
    assert Path(res["plot"]).exists()
    assert set(res["seconds"]) == {"features", "knn", "linear", "fewshot", "plot", "retrieval"}
    assert res["retrieval"]["recall@1"] > 0.9  # the kNN's features, searched test image against test image
    assert json.loads((tmp_path / "pixels" / "results.json").read_text())["knn"]["k=5"] == res["knn"]["k=5"]
    assert len(list((tmp_path / "features").glob("*.pt"))) == 1
    out = capsys.readouterr().out
    assert "| shots per class | top-1 (mean ± std) | runs |" in out
    eval_main(["knn", *args, "--k=[1]"])
    assert "features: reusing" in capsys.readouterr().out


def test_eval_cli_from_checkpoint_and_export(tmp_path, capsys):
    _model, ckpt = _pretrain(tmp_path, ["--model.backbone=SmallCNN", "--model.backbone.width=4"])
    eval_main(["export", f"--ckpt={ckpt}", f"--out={tmp_path}/cnn.pt"])
    assert "model.load_state_dict" in capsys.readouterr().out
    res = eval_main(
        [
            "knn",
            "--backbone=CheckpointBackbone",
            f"--backbone.path={tmp_path}/cnn.pt",
            "--data=SyntheticDataModule",
            "--data.num_samples=32",
            "--data.image_size=16",
            "--data.channels=1",
            "--data.num_workers=0",
            f"--out_dir={tmp_path}",
            "--wandb=false",
            "--k=[3]",
        ]
    )
    assert res["feature_dim"] == 16
    assert 0 <= res["knn"]["k=3"] <= 1


def test_dino_checkpoint_evaluates_the_teacher_like_embed(tmp_path):
    """DINO's ``embed`` is the EMA teacher (the paper evaluates it): loading or exporting its checkpoint gives the
    same network by default; ``weights='student'`` gives the student, which differs after training."""
    from tests.test_configs import ROOT, _synthetic

    c = cli(
        [
            "fit",
            "--config",
            str(ROOT / "configs/dino/fashion_mnist.yaml"),
            *_synthetic({"class_path": "lightning_ssl.data.FashionMNISTDataModule"}, tmp_path),
            "--model.init_args.momentum=0.5",
            "--trainer.max_steps=3",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.limit_val_batches=0",
            "--knn.every_n_epochs=0",
            f"--trainer.default_root_dir={tmp_path}",
            f"--checkpoint.dirpath={tmp_path}/ckpt",
        ]
    )
    model, ckpt = c.model.eval(), tmp_path / "ckpt" / "last.ckpt"
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        teacher, student = model.embed(x), model.backbone(x)
    assert not torch.allclose(teacher, student, atol=1e-4)
    torch.testing.assert_close(CheckpointBackbone(str(ckpt)).eval()(x), teacher)
    torch.testing.assert_close(CheckpointBackbone(str(ckpt), weights="student").eval()(x), student)
    exported = CheckpointBackbone(str(export_backbone(str(ckpt), str(tmp_path / "dino.pt")))).eval()
    torch.testing.assert_close(exported(x), teacher)
    _, simclr_ckpt = _pretrain(tmp_path / "s", ["--model.backbone=SmallCNN", "--model.backbone.width=4"])
    with pytest.raises(CheckpointError, match="no teacher backbone"):
        CheckpointBackbone(str(simclr_ckpt), weights="teacher")


def test_feature_cache_is_keyed_by_the_weights_content(tmp_path, capsys):
    """New weights written over the same file, with the same size and modification time (what a key of path, size
    and time stamp would take for the old ones), are new features; the same weights again reuse them."""
    import os

    import torchvision

    weights = tmp_path / "weights.pt"
    torch.save(torchvision.models.get_model("mobilenet_v3_small").state_dict(), weights)
    args = [
        "knn",
        "--backbone=TorchvisionBackbone",
        "--backbone.name=mobilenet_v3_small",
        f"--backbone.weights={weights}",
        "--data=SyntheticDataModule",
        "--data.num_samples=16",
        "--data.image_size=32",
        "--data.num_workers=0",
        f"--out_dir={tmp_path}",
        "--wandb=false",
        "--k=[1]",
    ]
    first = eval_main(args)
    assert "intra-op threads + 0 loader workers on" in capsys.readouterr().out  # within the usable CPUs
    stamp = weights.stat()
    more_training = torch.load(weights)
    for v in more_training.values():
        if v.is_floating_point():
            v.add_(0.5)
    torch.save(more_training, weights)
    os.utime(weights, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert (weights.stat().st_size, weights.stat().st_mtime_ns) == (stamp.st_size, stamp.st_mtime_ns)
    capsys.readouterr()
    second = eval_main(args)
    assert "features: reusing" not in capsys.readouterr().out
    assert second["name"] != first["name"]  # the run's name carries the key
    assert len(list((tmp_path / "features").glob("*.pt"))) == 2
    eval_main(args)
    assert "features: reusing" in capsys.readouterr().out


def test_eval_takes_the_config_names_fit_takes(tmp_path):
    """``--config eval/fashion_mnist`` is the packaged evaluation config; a training config stands for the backbone
    of its newest run on its data."""
    from lightning_ssl.cli import PACKAGED_CONFIGS
    from lightning_ssl.eval.cli import build_parser
    from lightning_ssl.eval.resolve import with_eval_configs

    assert with_eval_configs(["knn", "--config", "eval/fashion_mnist"])[2] == str(
        PACKAGED_CONFIGS / "eval/fashion_mnist.yaml"
    )
    cfg = build_parser().parse_args(with_eval_configs(["knn", "--config=simclr/fashion_mnist", "--k=[5]"])).knn
    assert cfg.backbone.class_path.endswith("CheckpointBackbone")
    assert cfg.backbone.init_args.path == "outputs/simclr_fashion_mnist"  # the config's trainer.default_root_dir
    assert cfg.data.class_path.endswith("FashionMNISTDataModule")
    assert cfg.k == [5]
