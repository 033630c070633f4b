"""Every YAML under configs/ (except the shared layers) runs on generated data with the config's own image size,
channels and number of classes: training configs one training and one validation batch (fast_dev_run), the
lightning-ssl-eval configs a kNN evaluation."""

import json
from pathlib import Path

import pytest
import yaml

from lightning_ssl.cli import cli
from lightning_ssl.config import import_class
from lightning_ssl.eval.cli import main as eval_main

ROOT = Path(__file__).resolve().parents[1]
ALL = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name != "shared")
TRAIN = [p for p in ALL if "model" in yaml.safe_load(p.read_text())]
EVAL = [p for p in ALL if "backbone" in yaml.safe_load(p.read_text())]


def _ids(p):
    return str(p.relative_to(ROOT / "configs"))


def _synthetic(data: dict, tmp_path: Path) -> list[str]:
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
        f"--data.image_size={info['image_size']}",
        f"--data.channels={info['channels']}",
        f"--data.num_classes={info['num_classes'] or 4}",
        "--data.num_samples=16",
        "--data.batch_size=8",
        "--data.num_workers=0",
    ]  # 8: MoCo split-BN groups


# Configs whose networks make a CPU smoke run slow run with a smaller one of the same kind (the wiring is what
# is tested). The GPU-only FSDP config (Lightning refuses FSDP on CPU) runs with the default strategy and a
# 2-block ViT; tests/test_multinode.py builds its FSDP strategy.
SHRINK_VIT = [
    "--trainer.strategy=auto",
    "--trainer.accelerator=cpu",
    "--model.init_args.backbone.init_args.depth=2",
    "--model.init_args.backbone.init_args.embed_dim=64",
    "--model.init_args.backbone.init_args.num_heads=2",
]
RESNET18 = ["--model.init_args.backbone.init_args.arch=resnet18"]
CPU_OVERRIDES = {
    "mae/imagenet_vit_gigantic_fsdp.yaml": [
        *SHRINK_VIT,
        "--model.init_args.decoder_dim=32",
        "--model.init_args.decoder_depth=1",
    ],
    "simclr/imagenet.yaml": RESNET18,
    "aim/imagenet.yaml": [*SHRINK_VIT, "--model.init_args.head_width=32", "--model.init_args.head_depth=1"],
    **{
        f"dino/imagenet_{name}.yaml": [
            *SHRINK_VIT,
            "--model.init_args.hidden_dim=64",
            "--model.init_args.out_dim=256",
            "--model.init_args.ibot_out_dim=256",
        ]
        for name in ("dinov2", "gram")
    },  # ViT-L/16 with two 65536-prototype heads: the wiring is what runs here
    "simclr/imagenet_streaming.yaml": RESNET18,
    "byol/imagenet.yaml": RESNET18,
    "lejepa/imagenet.yaml": RESNET18,
    "densecl/imagenet.yaml": RESNET18,
    "mmcr/cifar10.yaml": [*RESNET18, "--data.init_args.views.init_args.num_views=4"],  # 40 views of a ResNet-50
}


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
            *_synthetic(cfg["data"], tmp_path),
            *extra,
            "--trainer.fast_dev_run=true",
            "--trainer.logger=false",
            "--trainer.accelerator=cpu",
            f"--trainer.default_root_dir={tmp_path}",
            f"--checkpoint.dirpath={tmp_path}/ckpt",
        ]
    )


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
