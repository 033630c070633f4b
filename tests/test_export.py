"""Every export format carries the training preprocessing and is read back by its own ecosystem: the printed
recipe runs when pasted, loads the export with timm / transformers / onnxruntime / torchvision alone, and turns a
PNG file into the project's own features (``lightning_ssl.load``) within 1e-4; ONNX equals PyTorch for every
backbone kind; files get the user's umask; the console script exits 0; results accumulate per protocol."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lightning_ssl
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


HF_VIT = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}


def hf_vit(folder: Path) -> list[str]:
    """A tiny Hugging Face ViT saved to ``folder``: the CLI arguments of an HFVisionBackbone on it (3 ch, 16 px)."""
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(**HF_VIT, image_size=16, patch_size=4, num_channels=3)).save_pretrained(folder)
    return ["--model.backbone=HFVisionBackbone", f"--model.backbone.name_or_path={folder}"]


def pretrain(tmp_path, args, channels, size, *data, run_folder=False):
    """A one-step SimCLR run; ``run_folder``: in a run folder of its own (``<tmp_path>/version_0``), as the CLI
    places runs, instead of checkpoints in ``<tmp_path>/ckpt``."""
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
            *data,
            "--trainer.max_steps=1",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--knn.every_n_epochs=0",
            "--trainer.limit_val_batches=0",
            "--trainer.precision=32-true",
            f"--trainer.default_root_dir={tmp_path}",
            *([] if run_folder else [f"--checkpoint.dirpath={tmp_path}/ckpt"]),
        ]
    )
    return c.model.eval(), Path(c.trainer.checkpoint_callback.dirpath) / "last.ckpt"


def write_png(path: Path, channels: int, size: int) -> Path:
    """A random PNG file of the network's height, 4 px wider: every recipe converts its channels and center-crops
    it. It is not resampled: PIL (timm, the ONNX and state_dict recipes) and torchvision's tensor resize (the
    project's evaluation path, transformers' default backend) round a few pixels of a resized image one grey level
    apart, which moves features by ~1e-3 (docs/guides/export.md)."""
    rgb = (np.random.default_rng(0).random((size, size + 4, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(rgb)
    (image.convert("L") if channels == 1 else image).save(path)
    return path


def own_features(ckpt: Path, png: Path) -> torch.Tensor:
    """The project's features of an image file: the run's backbone after its evaluation transform."""
    _, backbone, transform = lightning_ssl.load(ckpt)
    with torch.no_grad():
        return backbone(transform(png)[None])


def recipe(meta_file: Path) -> dict:
    ns: dict = {}
    exec(json.loads(meta_file.read_text())["how_to_load"], ns)
    return ns


def export(ckpt: Path, folder: Path, fmt: str) -> tuple[Path, Path]:
    name = {"state_dict": "b.pt", "onnx": "b.onnx"}.get(fmt, "")
    out = export_backbone(str(ckpt), str(folder / fmt / name), format=fmt)
    return out, out.with_suffix(".json") if name else out / "lightning_ssl.json"


def recipe_features(ns: dict, images) -> torch.Tensor:
    return torch.as_tensor(np.asarray(ns["features"](images)))


@pytest.mark.parametrize("kind", sorted(BACKBONES))
def test_every_printed_recipe_runs_and_matches_the_projects_features(kind, tmp_path):
    args, channels, size, formats = BACKBONES[kind]
    model, ckpt = pretrain(tmp_path, args, channels, size)
    png, x = write_png(tmp_path / "image.png", channels, size), torch.randn(2, channels, size, size)
    want = own_features(ckpt, png)
    with torch.no_grad():
        embedded = model.embed(x)
    for fmt in formats:
        ns = recipe(export(ckpt, tmp_path, fmt)[1])
        got = recipe_features(ns, ns["preprocess"](Image.open(png))[None])
        print(f"{kind} {fmt} recipe on a PNG: max abs diff {float((got - want).abs().max()):.2e}")
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4, msg=lambda m, fmt=fmt: f"{fmt}, PNG: {m}")
        torch.testing.assert_close(recipe_features(ns, x), embedded, rtol=1e-4, atol=1e-5)
    for fmt in (f for f in ("timm", "hf") if f not in formats):  # a format that does not apply says so
        with pytest.raises(ValueError, match="equivalent"):
            export_backbone(str(ckpt), str(tmp_path / f"no_{fmt}"), format=fmt)


def test_hugging_face_backbone_exports_and_reloads(tmp_path):
    _, ckpt = pretrain(tmp_path, hf_vit(tmp_path / "hf_vit"), 3, 16)
    png = write_png(tmp_path / "image.png", 3, 16)
    want = own_features(ckpt, png)
    for fmt in ("state_dict", "hf"):
        ns = recipe(export(ckpt, tmp_path, fmt)[1])
        got = recipe_features(ns, ns["preprocess"](Image.open(png))[None])
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4, msg=lambda m, fmt=fmt: f"{fmt}: {m}")


MEAN, STD = [0.3], [0.4]  # the data's own statistics, not ImageNet's, so a format that drops them is caught


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    """A 1-channel 16-px ViT trained on data with its own mean and std: every format applies to it."""
    tmp = tmp_path_factory.mktemp("vit_run")
    args = BACKBONES["vit_cls"][0]
    _, ckpt = pretrain(tmp, args, 1, 16, f"--data.mean={MEAN}", f"--data.std={STD}")
    png = write_png(tmp / "image.png", 1, 16)
    return ckpt, png, own_features(ckpt, png)


def test_timm_export_carries_the_preprocessing_in_pretrained_cfg(vit_run, tmp_path):
    import timm

    ckpt, png, want = vit_run
    out, _ = export(ckpt, tmp_path, "timm")
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    config = timm.data.resolve_data_config(model=model)
    assert tuple(config["input_size"]) == (1, 16, 16)
    assert tuple(config["mean"]) == tuple(MEAN)
    assert tuple(config["std"]) == tuple(STD)
    assert config["interpolation"] == "bicubic"
    assert int(16 / config["crop_pct"]) == 16  # timm resizes the short side to floor(size / crop_pct)
    x = timm.data.create_transform(**config)(Image.open(png).convert("L"))[None]
    with torch.no_grad():
        got = model(x)
    print(f"timm (create_model + create_transform): max abs diff {float((got - want).abs().max()):.2e}")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_hf_export_has_a_preprocessor_config_that_auto_image_processor_reads(vit_run, tmp_path):
    from transformers import AutoImageProcessor, AutoModel

    ckpt, png, want = vit_run
    out, _ = export(ckpt, tmp_path, "hf")
    processor = AutoImageProcessor.from_pretrained(out)
    assert list(processor.image_mean) == MEAN
    assert list(processor.image_std) == STD
    model = AutoModel.from_pretrained(out).eval()
    x = processor(images=Image.open(png).convert("L"), return_tensors="pt")["pixel_values"]
    assert x.shape == (1, 1, 16, 16)
    with torch.no_grad():
        got = model(pixel_values=x).last_hidden_state[:, 0]
    print(f"hf (AutoModel + AutoImageProcessor): max abs diff {float((got - want).abs().max()):.2e}")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_state_dict_and_onnx_exports_carry_the_preprocessing_in_their_json_and_metadata(vit_run, tmp_path):
    import onnxruntime

    ckpt, png, want = vit_run
    expected = {"channels": 1, "image_size": 16, "mean": MEAN, "std": STD, "resize_size": 16}
    for fmt in ("state_dict", "onnx"):
        out, meta = export(ckpt, tmp_path, fmt)
        saved = json.loads(meta.read_text())["preprocessing"]
        assert {k: saved[k] for k in expected} == expected
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    pre = json.loads(session.get_modelmeta().custom_metadata_map["preprocessing"])
    assert {k: pre[k] for k in expected} == expected
    ns = recipe(meta)  # numpy + PIL from the metadata: onnxruntime has no image preprocessor of its own
    got = torch.from_numpy(session.run(["features"], {"pixel_values": ns["preprocess"](Image.open(png))[None]})[0])
    print(f"onnx (onnxruntime + metadata_props): max abs diff {float((got - want).abs().max()):.2e}")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    ns = recipe(export(ckpt, tmp_path, "state_dict")[1])
    got = recipe_features(ns, ns["preprocess"](Image.open(png))[None])
    print(f"state_dict (torch + torchvision from the JSON): max abs diff {float((got - want).abs().max()):.2e}")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_exported_files_get_the_users_umask(vit_run, tmp_path):
    ckpt = vit_run[0]
    old = os.umask(0o027)
    try:
        for fmt in ("state_dict", "timm", "hf"):
            out, meta = export(ckpt, tmp_path, fmt)
            files = [p for p in out.rglob("*") if p.is_file()] if out.is_dir() else [out, meta]
            assert any(p.suffix == ".safetensors" for p in files) or fmt == "state_dict"
            for path in files:
                assert path.stat().st_mode & 0o777 == 0o640, (fmt, path.name, oct(path.stat().st_mode))
    finally:
        os.umask(old)


ONNX_KINDS = ["smallcnn", "resnet_small_input", "torchvision_fc", "timm", "vit_cls", "hf"]


@pytest.mark.parametrize("kind", ONNX_KINDS)
def test_onnx_export_equals_pytorch_for_every_backbone_kind(kind, tmp_path):
    import onnxruntime

    if kind == "hf":
        args, channels, size = hf_vit(tmp_path / "hf_vit"), 3, 16
    else:
        args, channels, size, _ = BACKBONES[kind]
    model, ckpt = pretrain(tmp_path, args, channels, size)
    out, meta = export(ckpt, tmp_path, "onnx")
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"  # dynamic batch axis
    x = torch.randn(3, channels, size, size)  # another batch size than the export's example (2)
    with torch.no_grad():
        want = model.embed(x)
    got = torch.from_numpy(session.run(["features"], {"pixel_values": x.numpy()})[0])
    print(f"ONNX {kind}: max abs diff {float((got - want).abs().max()):.2e}")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    ns = recipe(meta)  # the printed recipe, as pasted, on a PNG file
    png = write_png(tmp_path / "image.png", channels, size)
    got = recipe_features(ns, ns["preprocess"](Image.open(png))[None])
    torch.testing.assert_close(got, own_features(ckpt, png), rtol=0, atol=1e-4)


def test_cli_export_of_a_run_folder_prints_a_recipe_that_runs_as_pasted(tmp_path, capsys):
    args, channels, size, _ = BACKBONES["smallcnn"]
    _, ckpt = pretrain(tmp_path / "runs", args, channels, size, run_folder=True)
    run = tmp_path / "runs" / "version_0"  # a run folder: its last checkpoint
    assert ckpt == run / "checkpoints" / "last.ckpt"
    eval_main(["export", "--ckpt", str(run), "--out", str(tmp_path / "b.pt")])
    printed = capsys.readouterr().out
    assert "1 channel(s), 16 px" in printed
    ns: dict = {}
    exec(printed.split("load it with:\n\n", 1)[1], ns)
    png = write_png(tmp_path / "image.png", channels, size)
    got = recipe_features(ns, ns["preprocess"](Image.open(png))[None])
    torch.testing.assert_close(got, own_features(ckpt, png), rtol=0, atol=1e-4)


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
