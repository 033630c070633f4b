"""Every YAML under configs/ (except the shared layers) runs on generated data with the config's own image size,
channels and number of classes: training configs one training and one validation batch (fast_dev_run), the
lightning-ssl-eval configs a kNN evaluation."""

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

        return [f"--data.source={write_corpus(tmp_path / 'corpus')}", "--data.block_size=16", "--data.batch_size=4",
                "--data.num_workers=0"]
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


@pytest.mark.parametrize("config", TRAIN, ids=_ids)
def test_config_fast_dev_run(config, tmp_path):
    cfg = yaml.safe_load(config.read_text())
    extra = []
    backbone = cfg["model"]["init_args"].get("backbone", {})
    if backbone.get("class_path", "").endswith("CheckpointBackbone"):  # no pretrained checkpoint here
        extra = ["--model.init_args.backbone=lightning_ssl.modules.backbones.SmallCNN",
                 "--model.init_args.backbone.init_args.width=4"]
    if "FSDP" in str(cfg.get("trainer", {}).get("strategy", "")):  # GPU-only: the smoke run checks the rest on CPU
        extra.append("--trainer.strategy=auto")
        if "n_layer" in cfg["model"]["init_args"]:  # and a GPU-sized transformer, one small layer of it
            extra += ["--model.init_args.n_layer=1", "--model.init_args.n_head=2", "--model.init_args.n_embd=32"]
    if any(c.get("class_path", "").endswith("TextSamples") for c in cfg.get("trainer", {}).get("callbacks", [])):
        extra.append("--trainer.callbacks.max_new_tokens=4")  # the last callback: a few tokens show it works
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
