"""Every YAML under configs/ (except the shared layers) runs on generated data with the config's own image size,
channels and number of classes: training configs one training and one validation batch (fast_dev_run), the
lightning-ssl-eval configs a kNN evaluation."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from lightning_ssl.cli import cli
from lightning_ssl.config import import_class
from lightning_ssl.eval.cli import main as eval_main
from tests.recipe_tools import build_model, image_size, parse

ROOT = Path(__file__).resolve().parents[1]
ALL = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name != "shared")
TRAIN = [p for p in ALL if "model" in yaml.safe_load(p.read_text())]
EVAL = [p for p in ALL if "backbone" in yaml.safe_load(p.read_text())]


def _ids(p):
    return str(p.relative_to(ROOT / "configs"))


def _synthetic(data: dict, tmp_path: Path, size: int | None = None) -> list[str]:
    if data["class_path"].endswith("ImageTextDataModule"):  # a table of generated pictures with captions
        from PIL import Image

        rows = ["image,caption,label,group,subgroup"]
        for i in range(16):
            colour = ("red", "blue")[i % 2]
            Image.new("RGB", (24, 24), colour).save(tmp_path / f"{i}.png")
            rows.append(f"{i}.png,a {colour} square number {i},{colour},{colour} things,squares")
        (tmp_path / "pairs.csv").write_text("\n".join(rows))
        return [f"--data.source={tmp_path / 'pairs.csv'}", "--data.batch_size=4", "--data.num_workers=0"]
    if data["class_path"].endswith("TextCorpusDataModule"):  # a folder of generated text files
        from tests.helpers import write_corpus

        return [
            f"--data.source={write_corpus(tmp_path / 'corpus')}",
            "--data.block_size=16",
            "--data.batch_size=4",
            "--data.num_workers=0",
        ]
    if data["class_path"].endswith("TextClassificationDataModule"):
        rows = ["text,label"] + [f"{w} number {i},{w}" for i in range(10) for w in ("cats", "stocks")]
        (tmp_path / "text.csv").write_text("\n".join(rows))
        return [f"--data.source={tmp_path / 'text.csv'}"]
    if data["class_path"].endswith("MultiBandDataModule"):  # folders of generated 13-band TIFF tiles
        from tests.helpers import write_multiband_folder

        size = (data.get("init_args") or {}).get("image_size", 64)
        write_multiband_folder(tmp_path / "train", bands=13, size=size, per_class=4)
        write_multiband_folder(tmp_path / "val", bands=13, size=size, per_class=2, seed=1)
        return [
            f"--data.train_dir={tmp_path / 'train'}",
            f"--data.val_dir={tmp_path / 'val'}",
            f"--data.root={tmp_path}",
            "--data.batch_size=4",
            "--data.num_workers=0",
        ]
    info = import_class(data["class_path"]).describe(data.get("init_args") or {})
    return [
        "--data=lightning_ssl.data.SyntheticDataModule",
        f"--data.image_size={size or info['image_size']}",
        f"--data.channels={info['channels']}",
        f"--data.num_classes={info['num_classes'] or 4}",
        "--data.num_samples=16",
        "--data.batch_size=8",
        "--data.num_workers=0",
    ]  # 8: MoCo split-BN groups


# Configs at ImageNet resolution: their full-size network is checked on the meta device (parameter count, output
# shape; nothing allocated), and a reduced copy of the same kind trains for the smoke run (the wiring is what is
# tested): 2 blocks of width 64 for a ViT at 8 x 8 patches, a ResNet-18 (ImageNet stem) at 64 px, narrow heads.
# The GPU-only FSDP config (Lightning refuses FSDP on CPU) runs with the default strategy; tests/test_multinode.py
# builds its FSDP strategy.
LARGE = [p for p in TRAIN if (image_size(p) or 0) >= 160]
NARROW = {  # method arguments -> the reduced copy's value
    "proj_hidden_dim": 64,
    "proj_dim": 32,
    "pred_hidden_dim": 64,
    "hidden_dim": 64,
    "bottleneck_dim": 32,
    "out_dim": 256,
    "num_prototypes": 32,
    "queue_size": 64,
    "decoder_dim": 32,
    "decoder_depth": 1,
    "decoder_heads": 2,
    "predictor_dim": 32,
    "predictor_depth": 1,
    "num_codes": 64,
    "num_masked": None,
    "min_block": None,
    "ibot_out_dim": 256,
    "head_width": 32,
    "head_depth": 1,
}
# below ImageNet resolution, still slow on a CPU: MMCR's CIFAR-10 recipe takes 40 views of a ResNet-50
CPU_OVERRIDES = {
    "mmcr/cifar10.yaml": [
        "--model.init_args.backbone.init_args.arch=resnet18",
        "--data.init_args.views.init_args.num_views=4",
    ]
}


def reduced(config: Path) -> tuple[list[str], int]:
    """CLI overrides that shrink a large config's network, and the image size the reduced copy trains at."""
    cfg = yaml.safe_load(config.read_text())
    args = cfg["model"]["init_args"]
    backbone = args["backbone"]
    extra = ["--trainer.strategy=auto"]
    if backbone["class_path"].endswith(".ViT"):
        size = 8 * backbone["init_args"]["patch_size"]
        extra += [f"--model.init_args.backbone.init_args.{k}={v}" for k, v in (("depth", 2), ("embed_dim", 64))]
        extra += [
            "--model.init_args.backbone.init_args.num_heads=2",
            "--model.init_args.backbone.init_args.mlp_ratio=4",
        ]
    else:
        size = 64  # with the ImageNet stem (7x7/2 + max-pool) the full config has: 16x16 maps after it
        extra += [
            "--model.init_args.backbone.init_args.arch=resnet18",
            "--model.init_args.backbone.init_args.small_input=false",
        ]
    for key, value in NARROW.items():
        if key in args:
            extra.append(f"--model.init_args.{key}={'null' if value is None else value}")
    views = cfg["data"]["init_args"].get("views", {})
    if views.get("class_path", "").endswith("MultiCropViews"):
        extra.append(f"--data.views.init_args.local_size={size // 2}")
    return extra, size


def test_every_config_is_covered():
    assert len(TRAIN) >= 10
    assert set(TRAIN) | set(EVAL) == set(ALL)


def _tiny_vit(patch_size: int) -> dict:
    return {
        "class_path": "lightning_ssl.modules.vit.ViT",
        "init_args": {"patch_size": patch_size, "embed_dim": 16, "depth": 1, "num_heads": 2},
    }


@pytest.mark.parametrize("config", TRAIN, ids=_ids)
def test_config_fast_dev_run(config, tmp_path):
    cfg = yaml.safe_load(config.read_text())
    extra = []
    args = cfg["model"]["init_args"]
    backbone = args.get("backbone", {})
    if backbone.get("class_path", "").endswith("CheckpointBackbone"):  # no pretrained checkpoint here
        extra = [
            "--model.init_args.backbone=lightning_ssl.modules.backbones.SmallCNN",
            "--model.init_args.backbone.init_args.width=4",
        ]
    size = None
    if config in LARGE:
        shrink, size = reduced(config)
        extra += shrink
    extra += CPU_OVERRIDES.get(_ids(config), [])
    # BEiT's tokenizer checkpoint and a VQ-KD tokenizer's teacher checkpoint: untrained tiny ViTs stand in
    patch = backbone.get("init_args", {}).get("patch_size", 16)
    if isinstance(args.get("tokenizer"), str):
        tokenizer = {
            "class_path": "lightning_ssl.methods.PatchTokenizer",
            "init_args": {"backbone": _tiny_vit(patch), "num_codes": 64},
        }
        extra.append(f"--model.init_args.tokenizer={json.dumps(tokenizer)}")
    if (args.get("teacher") or {}).get("class_path", "").endswith("CheckpointBackbone"):
        extra.append(f"--model.init_args.teacher={json.dumps(_tiny_vit(patch))}")
    if "FSDP" in str(cfg.get("trainer", {}).get("strategy", "")):  # GPU-only: the smoke run checks the rest on CPU
        extra.append("--trainer.strategy=auto")
        if "n_layer" in cfg["model"]["init_args"]:  # and a GPU-sized transformer, one small layer of it
            extra += ["--model.init_args.n_layer=1", "--model.init_args.n_head=2", "--model.init_args.n_embd=32"]
    if any(c.get("class_path", "").endswith("TextSamples") for c in cfg.get("trainer", {}).get("callbacks", [])):
        extra.append("--trainer.callbacks.max_new_tokens=4")  # the last callback: a few tokens show it works
    cli(
        [
            "fit",
            "--config",
            str(config),
            *_synthetic(cfg["data"], tmp_path, size),
            *extra,
            "--trainer.fast_dev_run=true",
            "--trainer.logger=false",
            "--trainer.accelerator=cpu",
            f"--trainer.default_root_dir={tmp_path}",
            f"--checkpoint.dirpath={tmp_path}/ckpt",
        ]
    )


FEATURES = {"resnet18": 512, "resnet50": 2048}


@pytest.mark.parametrize("config", LARGE, ids=_ids)
def test_large_config_structure_at_full_size(config):
    """The network the config builds, at full size on the meta device (no memory, no compute): parameter count as
    its own arguments dictate and the feature shape ``embed`` gives for a batch of the config's images."""
    model = build_model(parse(config))
    backbone = model.backbone
    spec = yaml.safe_load(config.read_text())["model"]["init_args"]["backbone"]["init_args"]
    if hasattr(backbone, "embed_dim"):  # ViT: 12 d^2 per block (attention 4 d^2, MLP 2 r d^2) + patch embedding
        d, depth, r = backbone.embed_dim, len(backbone.model.blocks), backbone.model_kwargs["mlp_ratio"]
        blocks = depth * ((4 + 2 * r) * d * d)
        embed = 3 * backbone.patch_size**2 * d
        count = sum(p.numel() for p in backbone.parameters())
        assert blocks + embed < count < 1.01 * (blocks + embed) + 2e6, (count, blocks + embed)
        assert (d, depth) == (spec["embed_dim"], spec["depth"])
        expected = d
    else:
        expected = FEATURES[spec["arch"]]
    assert all(p.device.type == "meta" for p in backbone.parameters())
    size = backbone.image_size
    features = model.embed(torch.empty(2, backbone.in_channels, size, size, device="meta"))
    assert tuple(features.shape) == (2, expected) == (2, model.num_features)


@pytest.mark.parametrize("config", EVAL, ids=_ids)
def test_eval_config_knn(config, tmp_path):
    cfg = yaml.safe_load(config.read_text())
    extra = []
    if cfg["backbone"]["class_path"].endswith("CheckpointBackbone"):
        extra = ["--backbone=lightning_ssl.modules.pretrained.Pixels"]
    res = eval_main(
        [
            "knn",
            "--config",
            str(config),
            *_synthetic(cfg["data"], tmp_path),
            *extra,
            "--k=[3]",
            "--wandb=false",
            f"--out_dir={tmp_path}",
        ]
    )
    assert 0.0 <= res["knn"]["k=3"] <= 1.0
