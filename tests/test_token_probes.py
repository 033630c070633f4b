"""Token-level evaluation: the patch-token accessor on every backbone kind, the attentive probe, the dense
(segmentation) probe and its data, and their ``lightning-ssl-eval`` subcommands."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from lightning_ssl.data.segmentation import CanvasSegmentationDataModule, MaskFolderDataModule, make_canvases
from lightning_ssl.eval.attentive import AttentiveProbe, attentive_probe
from lightning_ssl.eval.cli import main as eval_main
from lightning_ssl.eval.dense import dense_probe, segmentation_scores, train_dense_probe
from lightning_ssl.eval.linear import linear_probe
from lightning_ssl.modules.backbones import ResNet, SmallCNN, TimmBackbone
from lightning_ssl.modules.pretrained import HFVisionBackbone, Pixels, TorchvisionBackbone, patch_tokens
from lightning_ssl.modules.vit import ViT


# --- patch tokens ---------------------------------------------------------------------------------------------
def test_patch_tokens_of_every_backbone_kind(tmp_path):
    """Every image backbone gives (B, N, D) tokens; where it pools by averaging, the mean token is its output."""
    import transformers as T

    T.ViTModel(
        T.ViTConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
            patch_size=8, num_channels=1,
        )
    ).save_pretrained(tmp_path)  # fmt: skip
    x = torch.randn(2, 1, 32, 32)
    averaged = {  # backbone -> expected number of tokens
        SmallCNN(1, 32, width=4, stages=3): 64,  # a 8x8 map
        ResNet("resnet18", 1, 32): 16,  # small-input stem: 32 / 8
        ViT(1, 32, patch_size=8, embed_dim=32, depth=1, num_heads=2, pool="avg"): 16,
        TimmBackbone("resnet10t", 1, 32): 1,
        TorchvisionBackbone("resnet18", in_channels=1, image_size=32): 1,
        HFVisionBackbone(str(tmp_path), pooling="mean", in_channels=1, image_size=32): 16,
    }
    with torch.no_grad():
        for backbone, n in averaged.items():
            tokens = patch_tokens(backbone.eval(), x)
            assert tokens.shape[:2] == (2, n), type(backbone).__name__
            torch.testing.assert_close(tokens.mean(1), backbone(x), msg=type(backbone).__name__)
        timm_vit = TimmBackbone("vit_tiny_patch16_224", 1, 32, model_kwargs={"patch_size": 8}).eval()
        assert patch_tokens(timm_vit, x).shape == (2, 16, 192)
    with pytest.raises(ValueError, match="Pixels gives no patch tokens or feature map"):
        patch_tokens(Pixels(1, 32), x)


# --- attentive probe ------------------------------------------------------------------------------------------
def _one_token_matters(n=1200, tokens=16, d=8, seed=0):
    """The class is written in one token, marked by channel 0, among noisy tokens: averaging drowns it."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = 2 * torch.randn(n, tokens, d, generator=g)
    x[:, :, 0] = 0
    where = torch.randint(0, tokens, (n,), generator=g)
    codes = 3 * torch.randn(4, d - 1, generator=g)
    x[torch.arange(n), where, 0] = 6.0
    x[torch.arange(n), where, 1:] = codes[y] + 0.3 * torch.randn(n, d - 1, generator=g)
    return x, y


def test_attentive_probe_pools_what_a_linear_probe_on_the_mean_token_cannot():
    x, y = _one_token_matters()
    att = attentive_probe(x[:900], y[:900], x[900:], y[900:], num_classes=4, epochs=40, batch_size=64, lr=3e-3)
    lin = linear_probe(x[:900].mean(1), y[:900], x[900:].mean(1), y[900:], num_classes=4)
    assert att["top1"] > 0.9
    assert att["top1"] > lin["top1"] + 0.2


def test_attentive_probe_reads_maps_as_tokens_and_checks_heads():
    probe = AttentiveProbe(dim=8, num_classes=3, num_heads=2, num_queries=3)
    maps = torch.randn(2, 8, 3, 4)
    torch.testing.assert_close(probe(maps), probe(maps.flatten(2).transpose(1, 2)))
    assert probe(maps).shape == (2, 3)
    with pytest.raises(ValueError, match="num_heads must divide the token width 8"):
        AttentiveProbe(dim=8, num_classes=3, num_heads=3)


# --- segmentation data and the dense probe ----------------------------------------------------------------------
def test_canvases_are_deterministic_and_label_every_foreground_pixel():
    g = torch.Generator().manual_seed(0)
    items = torch.zeros(5, 1, 8, 8, dtype=torch.uint8)
    items[:, :, 2:6, 2:6] = torch.randint(100, 255, (5, 1, 4, 4), generator=g, dtype=torch.uint8)  # 4x4 objects
    labels = torch.tensor([0, 1, 2, 3, 4])
    canvases, masks = make_canvases(items, labels, count=30, canvas_size=20, items=(2, 3), seed=7)
    again = make_canvases(items, labels, count=30, canvas_size=20, items=(2, 3), seed=7)
    assert torch.equal(canvases, again[0])
    assert torch.equal(masks, again[1])
    assert not torch.equal(masks, make_canvases(items, labels, 30, 20, (2, 3), seed=8)[1])
    assert canvases.shape == (30, 1, 20, 20)
    assert torch.equal(masks > 0, canvases[:, 0] > 25)  # foreground pixels, and only they, carry an item class
    assert set(masks.unique().tolist()) <= {0, 1, 2, 3, 4, 5}  # background 0, item class c -> c + 1
    assert all(1 <= (m > 0).sum() <= 3 * 16 for m in masks)
    with pytest.raises(ValueError, match="smaller than an item"):
        make_canvases(items, labels, 1, canvas_size=6)


def test_canvas_datamodule_from_fashion_mnist_layout():
    from lightning_ssl.data import SyntheticDataModule

    src = SyntheticDataModule(num_samples=40, num_classes=3, image_size=14, channels=1, num_workers=0)
    dm = CanvasSegmentationDataModule(src, train_size=6, test_size=4, batch_size=4)
    assert dm.num_classes == 4
    assert dm.class_names[0] == "background"
    test, train = dm.test_dataloader()
    x, m = next(iter(train))
    assert x.shape == (4, 1, 32, 32)  # 64/28 of a 14 px item
    assert m.shape == (4, 32, 32)
    assert m.dtype == torch.long
    assert len(test.dataset) == 4


class _Upsample(nn.Module):
    def forward(self, maps, size):
        return nn.functional.interpolate(maps.float(), size=size, mode="nearest")


def test_segmentation_scores_by_hand():
    target = torch.tensor([[[0, 0, 1, 1], [0, 2, 2, 255]]])  # (1, 2, 4), one ignored pixel
    pred = torch.tensor([[[0, 1, 1, 1], [0, 2, 0, 2]]])
    logits = nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2)  # class 3 occurs nowhere
    s = segmentation_scores(_Upsample(), logits, target, num_classes=4)
    iou = [2 / 4, 2 / 3, 1 / 2]  # class 0: {00,10} of {00,01,10,12}; 1: {02,03} of {01,02,03}; 2: {11} of {11,12}
    assert s["miou"] == pytest.approx(sum(iou) / 3)
    assert s["pixel_accuracy"] == pytest.approx(5 / 7)
    assert s["iou"][:3] == pytest.approx(iou)


def test_dense_probe_learns_classes_written_in_the_feature_map():
    g = torch.Generator().manual_seed(0)
    cells = torch.randint(0, 3, (200, 4, 4), generator=g)  # a class per feature-map cell
    maps = 2 * nn.functional.one_hot(cells, 6).permute(0, 3, 1, 2).float() + 0.3 * torch.randn(200, 6, 4, 4)
    masks = cells.repeat_interleave(4, 1).repeat_interleave(4, 2)  # 16x16 pixels, 4x4 per cell
    s = dense_probe(maps[:150].half(), cells[:150], maps[150:].half(), cells[150:], 3, epochs=30, lr=1e-2)
    assert s["miou"] > 0.98  # at the feature map's resolution: the 1x1 convolution reads the classes
    s = dense_probe(maps[:150].half(), masks[:150], maps[150:].half(), masks[150:], 3, epochs=30, lr=1e-2)
    assert s["miou"] > 0.85  # at pixel resolution the bilinear upsampling blurs the cells' corners
    assert s["pixel_accuracy"] > 0.92
    with pytest.raises(ValueError, match=r"mask values must lie in \[0, 2\)"):
        train_dense_probe(maps, masks, num_classes=2)


def _write_pairs(root, split, names, size=(12, 10), mask_size=None):
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / split / "images" / f"{name}.png")
        mask = rng.integers(0, 3, mask_size or size, dtype=np.uint8)
        Image.fromarray(mask, mode="L").save(root / split / "masks" / f"{name}.png")


def test_mask_folder_pairs_and_clear_errors(tmp_path):
    _write_pairs(tmp_path, "train", ["a", "b", "c"])
    _write_pairs(tmp_path, "val", ["d"])
    dm = MaskFolderDataModule(str(tmp_path), image_size=16, batch_size=2)
    val, train = dm.test_dataloader()
    x, m = next(iter(train))
    assert x.shape == (2, 3, 16, 16)
    assert m.shape == (2, 16, 16)
    assert dm.num_classes == 3  # inferred from the training masks
    assert len(val.dataset) == 1
    (tmp_path / "val" / "masks" / "d.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"no mask for .*d\.png: expected .*val/masks/d\.png"):
        MaskFolderDataModule(str(tmp_path), image_size=16).test_dataloader()
    _write_pairs(tmp_path, "val", ["d"], mask_size=(5, 5))
    with pytest.raises(ValueError, match=r"is 5x5 but its image .* is 12x10"):
        MaskFolderDataModule(str(tmp_path), image_size=16).test_dataloader()
    with pytest.raises(FileNotFoundError, match="train/images is missing"):
        MaskFolderDataModule(str(tmp_path / "nowhere")).prepare_data()


# --- the evaluation CLI -----------------------------------------------------------------------------------------
def test_eval_cli_attentive_dense_retrieval(tmp_path, capsys):
    args = [
        "--backbone=SmallCNN",
        "--backbone.width=4",
        "--data=SyntheticDataModule",
        "--data.num_samples=80",
        "--data.num_classes=4",
        "--data.image_size=16",
        "--data.channels=1",
        "--data.num_workers=0",
        "--data.noise=0.1",
        f"--out_dir={tmp_path}",
        "--name=cnn",
        "--wandb=false",
    ]
    res = eval_main(["attentive", *args, "--attentive.epochs=2", "--attentive.num_heads=2"])
    assert res["attentive"]["token_dim"] == 16  # width 4 x 2**2 channels on a 4x4 map
    assert res["attentive"]["tokens"] == 16
    assert 0 <= res["attentive"]["top1"] <= 1
    assert "linear_on_mean_token" in res["attentive"]
    res = eval_main(["dense", *args, "--dense.epochs=2", "--dense.train_size=20", "--dense.test_size=8"])
    assert res["dense"]["data"] == "CanvasSegmentationDataModule"
    assert res["dense"]["image_size"] == [37, 37]
    assert len(res["dense"]["iou"]) == 5  # background + 4 classes
    res = eval_main(["retrieval", *args, "--recall_k=[1,3]"])
    assert set(res["retrieval"]) == {"recall@1", "recall@3", "r_precision", "map@r", "queries"}
    saved = json.loads((tmp_path / "cnn" / "results.json").read_text())
    assert {"attentive", "dense", "retrieval"} <= set(saved)  # each protocol's section is kept
    assert "mIoU" in capsys.readouterr().out
    pixels = [a if not a.startswith("--backbone") else "--backbone=Pixels" for a in args if a != "--backbone.width=4"]
    for protocol in ("attentive", "dense"):
        with pytest.raises(ValueError, match="Pixels gives no patch tokens or feature map"):
            eval_main([protocol, *pixels])
