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
    if data["class_path"].endswith("TextClassificationDataModule"):
        rows = ["text,label"] + [f"{w} number {i},{w}" for i in range(10) for w in ("cats", "stocks")]
        (tmp_path / "text.csv").write_text("\n".join(rows))
        return [f"--data.source={tmp_path / 'text.csv'}"]
    info = import_class(data["class_path"]).describe(data.get("init_args") or {})
    return ["--data=lightning_ssl.data.SyntheticDataModule", f"--data.image_size={info['image_size']}",
            f"--data.channels={info['channels']}", f"--data.num_classes={info['num_classes'] or 4}",
            "--data.num_samples=16", "--data.batch_size=4", "--data.num_workers=0"]


def test_every_config_is_covered():
    assert len(TRAIN) >= 10 and set(TRAIN) | set(EVAL) == set(ALL)


def _tiny_vit(patch_size: int) -> dict:
    return {"class_path": "lightning_ssl.modules.vit.ViT",
            "init_args": {"patch_size": patch_size, "embed_dim": 16, "depth": 1, "num_heads": 2}}


@pytest.mark.parametrize("config", TRAIN, ids=_ids)
def test_config_fast_dev_run(config, tmp_path):
    cfg = yaml.safe_load(config.read_text())
    extra = []
    args = cfg["model"]["init_args"]
    backbone = args.get("backbone", {})
    if backbone.get("class_path", "").endswith("CheckpointBackbone"):  # no pretrained checkpoint here
        extra = ["--model.init_args.backbone=lightning_ssl.modules.backbones.SmallCNN",
                 "--model.init_args.backbone.init_args.width=4"]
    # BEiT's tokenizer checkpoint and a VQ-KD tokenizer's teacher checkpoint: untrained tiny ViTs stand in
    patch = backbone.get("init_args", {}).get("patch_size", 16)
    if isinstance(args.get("tokenizer"), str):
        tokenizer = {"class_path": "lightning_ssl.methods.PatchTokenizer",
                     "init_args": {"backbone": _tiny_vit(patch), "num_codes": 64}}
        extra.append(f"--model.init_args.tokenizer={json.dumps(tokenizer)}")
    if (args.get("teacher") or {}).get("class_path", "").endswith("CheckpointBackbone"):
        extra.append(f"--model.init_args.teacher={json.dumps(_tiny_vit(patch))}")
    cli(["fit", "--config", str(config), *_synthetic(cfg["data"], tmp_path), *extra, "--trainer.fast_dev_run=true",
         "--trainer.logger=false", "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}",
         f"--checkpoint.dirpath={tmp_path}/ckpt"])


@pytest.mark.parametrize("config", EVAL, ids=_ids)
def test_eval_config_knn(config, tmp_path):
    cfg = yaml.safe_load(config.read_text())
    extra = []
    if cfg["backbone"]["class_path"].endswith("CheckpointBackbone"):
        extra = ["--backbone=lightning_ssl.modules.pretrained.Pixels"]
    res = eval_main(["knn", "--config", str(config), *_synthetic(cfg["data"], tmp_path), *extra, "--k=[3]", "--wandb=false",
                     f"--out_dir={tmp_path}"])
    assert 0.0 <= res["knn"]["k=3"] <= 1.0
