"""Every load snippet ``export`` can print runs when pasted, for every backbone kind and format, and gives
``embed``'s features; the console script exits 0 on success; results accumulate per protocol."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_ssl.cli import cli
from lightning_ssl.eval import export_backbone
from lightning_ssl.eval.cli import main as eval_main

BACKBONES = {  # name: (CLI args for the backbone, input channels, image size, formats that apply)
    "smallcnn": (["--model.backbone=SmallCNN", "--model.backbone.width=4"], 1, 16, ["state_dict"]),
    "resnet_small_input": (
        ["--model.backbone=lightning_ssl.modules.backbones.ResNet", "--model.backbone.arch=resnet18"],
        1,
        16,
        ["state_dict"],
    ),
    "resnet_standard": (
        [
            "--model.backbone=lightning_ssl.modules.backbones.ResNet",
            "--model.backbone.arch=resnet18",
            "--model.backbone.small_input=false",
        ],
        3,
        32,
        ["state_dict", "timm"],
    ),
    "timm": (["--model.backbone=TimmBackbone", "--model.backbone.name=resnet10t"], 1, 16, ["state_dict", "timm"]),
    "vit_cls": (
        [
            "--model.backbone=lightning_ssl.modules.vit.ViT",
            "--model.backbone.patch_size=4",
            "--model.backbone.embed_dim=16",
            "--model.backbone.depth=1",
            "--model.backbone.num_heads=2",
        ],
        1,
        16,
        ["state_dict", "timm", "hf"],
    ),
    "vit_avg": (
        [
            "--model.backbone=lightning_ssl.modules.vit.ViT",
            "--model.backbone.patch_size=4",
            "--model.backbone.embed_dim=16",
            "--model.backbone.depth=1",
            "--model.backbone.num_heads=2",
            "--model.backbone.pool=avg",
        ],
        3,
        16,
        ["state_dict", "timm", "hf"],
    ),
    "torchvision_fc": (
        ["--model.backbone=TorchvisionBackbone", "--model.backbone.name=resnet18"],
        3,
        32,
        ["state_dict"],
    ),
    "torchvision_sequential_head": (
        ["--model.backbone=TorchvisionBackbone", "--model.backbone.name=mobilenet_v3_small"],
        3,
        32,
        ["state_dict"],
    ),
    "torchvision_gray": (
        ["--model.backbone=TorchvisionBackbone", "--model.backbone.name=resnet18"],
        1,
        32,
        ["state_dict"],
    ),
}


def pretrain(tmp_path, args, channels, size):
    c = cli(
        [
            "fit",
            "--model=SimCLR",
            *args,
            "--model.proj_hidden_dim=16",
            "--model.proj_dim=8",
            "--data=SyntheticDataModule",
            "--data.num_samples=16",
            "--data.batch_size=8",
            "--data.num_workers=0",
            f"--data.image_size={size}",
            f"--data.channels={channels}",
            "--trainer.max_steps=1",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--knn.every_n_epochs=0",
            "--trainer.limit_val_batches=0",
            "--trainer.precision=32-true",
            f"--trainer.default_root_dir={tmp_path}",
            f"--checkpoint.dirpath={tmp_path}/ckpt",
        ]
    )
    return c.model.eval(), tmp_path / "ckpt" / "last.ckpt"


def run_recipe(meta_file: Path):
    ns: dict = {}
    exec(json.loads(meta_file.read_text())["how_to_load"], ns)
    return ns["features"]


@pytest.mark.parametrize("kind", sorted(BACKBONES))
def test_every_printed_recipe_runs_and_matches_embed(kind, tmp_path):
    args, channels, size, formats = BACKBONES[kind]
    model, ckpt = pretrain(tmp_path, args, channels, size)
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        want = model.embed(x)
        for fmt in formats:
            out = export_backbone(
                str(ckpt), str(tmp_path / f"{kind}_{fmt}" / ("b.pt" if fmt == "state_dict" else "")), format=fmt
            )
            meta = out.with_suffix(".json") if fmt == "state_dict" else out / "lightning_ssl.json"
            torch.testing.assert_close(
                run_recipe(meta)(x), want, rtol=1e-4, atol=1e-5, msg=lambda m, fmt=fmt: f"{fmt}: {m}"
            )
        others = [f for f in ("timm", "hf") if f not in formats]
        for fmt in others:  # a format that does not apply says so
            with pytest.raises(ValueError, match="equivalent"):
                export_backbone(str(ckpt), str(tmp_path / f"no_{fmt}"), format=fmt)


def test_hugging_face_backbone_exports_and_reloads(tmp_path):
    from transformers import ViTConfig, ViTModel

    ViTModel(
        ViTConfig(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            image_size=16,
            patch_size=4,
            num_channels=3,
        )
    ).save_pretrained(tmp_path / "hf_vit")
    model, ckpt = pretrain(
        tmp_path, ["--model.backbone=HFVisionBackbone", f"--model.backbone.name_or_path={tmp_path / 'hf_vit'}"], 3, 16
    )
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = model.embed(x)
        for fmt in ("state_dict", "hf"):
            out = export_backbone(str(ckpt), str(tmp_path / fmt / ("b.pt" if fmt == "state_dict" else "")), format=fmt)
            meta = out.with_suffix(".json") if fmt == "state_dict" else out / "lightning_ssl.json"
            torch.testing.assert_close(run_recipe(meta)(x), want, rtol=1e-4, atol=1e-5)


def test_console_script_exits_0_and_results_accumulate(tmp_path):
    exe = Path(sys.executable).with_name("lightning-ssl-eval")
    common = [
        "--backbone=Pixels",
        "--data=SyntheticDataModule",
        "--data.num_samples=40",
        "--data.image_size=8",
        "--data.channels=1",
        "--data.num_workers=0",
        f"--out_dir={tmp_path}",
        "--name=px",
        "--wandb=false",
    ]
    eval_main(["knn", *common, "--k=[3]"])  # in this process (cheaper), then the console script
    out = subprocess.run([str(exe), "linear", *common, "--epochs=2"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "'linear'" not in out.stderr
    assert "Linear probe" in out.stdout
    results = json.loads((tmp_path / "px" / "results.json").read_text())
    assert "k=3" in results["knn"]
    assert "top1" in results["linear"]
    assert {"knn", "linear"} <= set(results["seconds"])
