"""Points where a review against the papers' reference code found the library different, each with a test that
fails on the earlier behaviour (numbers refer to the review's list)."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from lightning_ssl.data import BYOLViews, MultiCropViews
from lightning_ssl.data.transforms import eval_transform
from lightning_ssl.losses import koleo_loss
from lightning_ssl.methods import DINO, MoCo, MoCoV3, SimSiam
from lightning_ssl.methods.dino import clip_gradients_per_parameter
from lightning_ssl.modules.backbones import SmallCNN
from lightning_ssl.modules.distributed import gather
from lightning_ssl.modules.sync_bn import SplitBatchNorm
from lightning_ssl.modules.vit import ViT
from tests.helpers import run_distributed

ROOT = Path(__file__).resolve().parents[1]


def tiny_vit():
    return ViT(in_channels=1, image_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2)


# 2. DINO clips each parameter's gradient norm (utils.clip_gradients), before cancelling the last layer's
def reference_clip_gradients(params, clip):  # facebookresearch/dino utils.clip_gradients
    for p in params:
        if p.grad is not None:
            clip_coef = clip / (p.grad.data.norm(2) + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)


def test_dino_clips_per_parameter_like_the_reference():
    torch.manual_seed(0)
    a = [nn.Parameter(torch.randn(5, 3)) for _ in range(4)]
    for p, scale in zip(a, (10.0, 0.01, 3.0, 100.0), strict=True):
        p.grad = torch.randn_like(p) * scale
    b = [nn.Parameter(p.detach().clone()) for p in a]
    for p, q in zip(a, b, strict=True):
        q.grad = p.grad.clone()
    clip_gradients_per_parameter(a, 3.0)
    reference_clip_gradients(b, 3.0)
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    assert max(p.grad.norm() for p in a) <= 3.0 + 1e-4
    assert a[1].grad.norm() < 0.2
    g = [p.grad.clone() for p in b]  # a global-norm clip is a different (stronger) operation
    torch.nn.utils.clip_grad_norm_(b, 3.0)
    assert not all(torch.allclose(x, p.grad) for x, p in zip(g, b, strict=True))


def test_dino_step_clips_then_cancels_and_configs_use_the_reference_clip():
    model = DINO(tiny_vit(), hidden_dim=16, bottleneck_dim=8, out_dim=32, clip_grad=3.0)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 50
    model.on_before_optimizer_step(None)  # epoch 0: the last layer is frozen
    assert all(p.grad is None for p in model.head.last_layer.parameters())
    assert all(p.grad.norm() <= 3.0 + 1e-4 for p in model.parameters() if p.grad is not None)
    for path in (ROOT / "configs/dino").glob("*.yaml"):
        cfg = yaml.safe_load(path.read_text())
        assert "gradient_clip_val" not in cfg["trainer"], path  # Lightning's global-norm clip is not DINO's
        # DINO's own recipe clips each parameter at 3.0; solo-learn's ResNet-18 CIFAR recipe does not clip
        solo = "reference: vturrisi/solo-learn" in path.read_text()
        assert cfg["model"]["init_args"]["clip_grad"] == (None if solo else 3.0), path
    with pytest.raises(ValueError, match="clip_grad"):
        DINO(tiny_vit(), hidden_dim=16, bottleneck_dim=8, out_dim=32, clip_grad=0.0)


# 3. MoCo: shuffle-BN and synchronized BatchNorm exclude each other; split-BN on one device
def test_split_batchnorm_normalizes_each_group_on_its_own():
    bn = SplitBatchNorm(3, num_splits=2, affine=False)
    x = torch.randn(8, 3, 4, 4)
    y = bn(x)
    for j in range(2):  # group j holds samples j, j + 2, ...: each is standardized with its own statistics
        g = x[j::2]
        ref = (g - g.mean((0, 2, 3), keepdim=True)) / (g.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()
        torch.testing.assert_close(y[j::2], ref, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(y, F.batch_norm(x, None, None, training=True), atol=1e-3)  # not the whole-batch BN
    bn.eval()
    torch.testing.assert_close(bn(x), F.batch_norm(x, bn.running_mean, bn.running_var, eps=bn.eps))
    with pytest.raises(ValueError, match="equal groups"):
        bn.train()(torch.randn(5, 3, 4, 4))


def test_moco_split_bn_shuffles_keys_and_refuses_sync_bn():
    model = MoCo(SmallCNN(1, 16, width=4), proj_hidden_dim=16, proj_dim=8, queue_size=32, split_bn=4)
    bns = [m for m in model.teacher_backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns
    assert all(isinstance(m, SplitBatchNorm) for m in bns)
    x = torch.randn(8, 1, 16, 16)
    torch.manual_seed(0)
    k1 = model.keys(x)
    torch.manual_seed(1)
    k2 = model.keys(x)
    assert not torch.allclose(k1, k2)  # the shuffle changes which keys share BatchNorm statistics

    from lightning_ssl.modules.sync_bn import convert_batchnorm

    synced = convert_batchnorm(MoCo(SmallCNN(1, 16, width=4), proj_hidden_dim=16, proj_dim=8, queue_size=32))

    class T:  # what on_fit_start reads from a Trainer under 2-process DDP with sync_batchnorm
        datamodule, world_size = None, 2

    synced._trainer = T()
    with pytest.raises(ValueError, match="shuffle-BN and synchronized BatchNorm exclude each other"):
        synced.on_fit_start()
    with pytest.raises(ValueError, match="split_bn"):
        MoCo(SmallCNN(1, 16, width=4), split_bn=0)


def test_moco_config_and_ddp_layers_choose_one():
    for name in ("cifar10", "imagenet"):  # solo-learn's CIFAR recipe: synchronized BN; MoCo v2's own: shuffled BN
        cfg = yaml.safe_load((ROOT / f"configs/moco/{name}.yaml").read_text())
        sync = cfg["trainer"].get("sync_batchnorm", False)
        assert sync != cfg["model"]["init_args"].get("shuffle_bn", True), name
    assert "sync_batchnorm" not in yaml.safe_load((ROOT / "configs/shared/ddp.yaml").read_text())["trainer"]
    assert yaml.safe_load((ROOT / "configs/shared/ddp_syncbn.yaml").read_text())["trainer"]["sync_batchnorm"] is True


# 4. DINO's augmentation: ColorJitter(0.4, 0.4, 0.2, 0.1), 8 local crops, bicubic
def test_multicrop_follows_dino_augmentation():
    views = MultiCropViews()
    assert views.local_crops == 8
    assert len(views.views) == 10
    assert all(v["jitter"] == (0.4, 0.4, 0.2, 0.1) and v["interpolation"] == "bicubic" for v in views.views)
    t = views.build(32, 3, (0.5,) * 3, (0.25,) * 3).transforms[0]
    jitter = next(m for m in t.transforms if type(m).__name__ == "RandomApply").transforms[0]
    assert jitter.saturation == (0.8, 1.2)
    assert jitter.hue == (-0.1, 0.1)
    assert jitter.brightness == (0.6, 1.4)
    crop = t.transforms[0]
    assert crop.interpolation.value == "bicubic"
    batched = views.build_batched(32, 3, (0.5,) * 3, (0.25,) * 3).transforms[0]
    kj = next(m for m in batched.rest if type(m).__name__ == "ColorJitter")
    assert kj.saturation == pytest.approx(0.2)
    assert kj.hue == pytest.approx(0.1)


# 5. BYOL's asymmetric views
def test_byol_views_are_asymmetric():
    v = BYOLViews().views
    assert (v[0]["blur_prob"], v[1]["blur_prob"]) == (1.0, 0.1)
    assert (v[0]["solarize_prob"], v[1]["solarize_prob"]) == (
        0.0,
        0.2,
    )
    assert v[0]["jitter"] == v[1]["jitter"] == (0.4, 0.4, 0.2, 0.1)
    for name in ("cifar10", "fashion_mnist"):
        cfg = yaml.safe_load((ROOT / f"configs/byol/{name}.yaml").read_text())
        assert cfg["data"]["init_args"]["views"]["class_path"].endswith("BYOLViews")


# 6. DINO's weight-decay schedule is its own, whatever the optimizer's default
def test_dino_weight_decay_starts_where_dino_says():
    model = DINO(tiny_vit(), hidden_dim=16, bottleneck_dim=8, out_dim=32, weight_decay=0.04, weight_decay_end=0.4)
    opt = torch.optim.AdamW(
        __import__("lightning_ssl.optim", fromlist=["param_groups"]).param_groups(model), weight_decay=0.0
    )

    class T:
        global_step, estimated_stepping_batches, optimizers = 0, 10, [opt]

    model._trainer = T()
    model.log = lambda *a, **k: None
    model._schedule_weight_decay()
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.04)
    assert opt.param_groups[1]["weight_decay"] == 0.0
    T.global_step = 9
    model._schedule_weight_decay()
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.4)  # applied although AdamW's wd was 0


# 8. evaluation resize: DINO/MAE protocol (256 -> 224 center crop) for folders of any size
def test_eval_transform_resizes_then_center_crops():
    t = eval_transform(224, (0.5,) * 3, (0.25,) * 3)
    resize, crop = t.transforms[0], t.transforms[1]
    assert resize.size == [256]
    assert crop.size == (224, 224)
    x = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    assert t(x).shape == (3, 224, 224)


def test_image_folder_evaluates_with_the_protocol_and_tensor_sets_resize_whole(tmp_path):
    from PIL import Image

    from lightning_ssl.data import FashionMNISTDataModule, ImageFolderDataModule

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.new("RGB", (400, 300), "red" if c == "a" else "blue").save(tmp_path / c / "x.png")
    resize = ImageFolderDataModule(str(tmp_path), str(tmp_path), image_size=32).eval_transform().transforms[0]
    assert resize.size == [round(32 * 256 / 224)]
    resize = (
        ImageFolderDataModule(str(tmp_path), str(tmp_path), image_size=32, eval_resize_ratio=1.0)
        .eval_transform()
        .transforms[0]
    )
    assert resize.size == [32]
    whole = FashionMNISTDataModule(image_size=56).eval_transform().transforms  # an upsampled 28 px image is not cropped
    assert whole[0].size == [56]
    assert whole[1].size == (56, 56)


# 9. MoCo v3 heads and temperature follow the backbone kind; SimSiam's projector width follows the backbone
def test_mocov3_defaults_follow_the_backbone():
    cnn = MoCoV3(SmallCNN(1, 16, width=4), proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16)
    assert cnn.temperature == 1.0
    assert sum(isinstance(m, nn.Linear) for m in cnn.projector) == 2
    assert not isinstance(list(cnn.predictor)[-1], nn.BatchNorm1d)
    vit = MoCoV3(tiny_vit(), proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16)
    assert vit.temperature == 0.2
    assert sum(isinstance(m, nn.Linear) for m in vit.projector) == 3
    assert isinstance(list(vit.predictor)[-1], nn.BatchNorm1d)
    assert MoCoV3(SmallCNN(1, 16, width=4), temperature=0.5).temperature == 0.5  # explicit wins
    s = SimSiam(SmallCNN(1, 16, width=4), proj_dim=32)
    assert s.projector[0].out_features == s.num_features == 16  # hidden = backbone width, not proj_dim


# 10. KoLeo as DINOv2: neighbours per process, eps inside the distance
def dinov2_koleo(x, eps=1e-8):  # facebookresearch/dinov2 KoLeoLoss
    x = F.normalize(x, eps=eps, p=2, dim=-1)
    dots = x @ x.t()
    n = x.shape[0]
    dots.view(-1)[:: (n + 1)].fill_(-1)
    nearest = dots.argmax(dim=1)
    distances = nn.PairwiseDistance(2, eps=eps)(x, x[nearest])
    return -torch.log(distances + eps).mean()


def test_koleo_matches_dinov2_and_searches_per_process_by_default():
    torch.manual_seed(0)
    x = torch.randn(12, 5)
    assert koleo_loss(x).item() == pytest.approx(dinov2_koleo(x).item(), rel=1e-6)
    twins = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # a zero distance: eps inside keeps it finite
    assert koleo_loss(twins).item() == pytest.approx(dinov2_koleo(twins).item(), rel=1e-6)

    def per_process(rank, world):
        torch.manual_seed(1)
        full = torch.randn(8, 4)
        mine = full[rank * 4 : (rank + 1) * 4]
        return koleo_loss(mine).item(), dinov2_koleo(mine).item(), koleo_loss(mine, local=False).item()

    (a, ref_a, glob_a), (b, ref_b, glob_b) = run_distributed(per_process)
    assert a == pytest.approx(ref_a, rel=1e-6)
    assert b == pytest.approx(ref_b, rel=1e-6)
    torch.manual_seed(1)
    assert (glob_a + glob_b) / 2 == pytest.approx(koleo_loss(torch.randn(8, 4), local=True).item(), rel=1e-5)


# 11. gather's backward reduces a copy: gather(x) + y leaves y's gradient alone
def test_gather_backward_does_not_touch_other_gradients():
    def step(rank, world):
        x = torch.ones(2, 3, requires_grad=True)
        y = torch.zeros(4, 3, requires_grad=True)
        (gather(x) + y).sum().backward()
        return x.grad.clone(), y.grad.clone()

    for xg, yg in run_distributed(step):
        assert torch.equal(yg, torch.ones(4, 3))  # reduced in place, it would be 2 (the world size)
        assert torch.equal(xg, 2 * torch.ones(2, 3))  # both processes' losses depend on x
