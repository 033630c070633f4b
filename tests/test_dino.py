"""DINO (+ iBOT, KoLeo): losses against reference formulas and hand-computed values, the center under real DDP,
the teacher, the frozen last layer, schedules, multi-crop views, the ViT's attention maps."""

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lightning_ssl.callbacks.images import AttentionMapLogger, keep_mass, render_attention
from lightning_ssl.data import MultiCropViews, SyntheticDataModule
from lightning_ssl.losses import DINOLoss, dino_loss, ibot_loss, koleo_loss, updated_center
from lightning_ssl.methods import DINO
from lightning_ssl.methods.dino import teacher_temperature
from lightning_ssl.modules.backbones import ResNet
from lightning_ssl.modules.dino_head import DINOHead
from lightning_ssl.modules.masking import block_masking, patchify, unpatchify
from lightning_ssl.modules.momentum import cosine_momentum
from lightning_ssl.modules.vit import ViT
from tests.helpers import run_distributed

HEAD = {"hidden_dim": 16, "bottleneck_dim": 8, "out_dim": 32}


def tiny_vit(**kw):
    kw = {"in_channels": 1, "image_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2, **kw}
    return ViT(**kw)


def crops(b=4, n_local=2):
    return [torch.randn(b, 1, 16, 16), torch.randn(b, 1, 16, 16)] + [torch.randn(b, 1, 8, 8) for _ in range(n_local)]


def tiny_data(**kw):
    views = MultiCropViews(global_crops=2, local_crops=2, local_size=8, global_blur=(0.0, 0.0), local_blur=0.0)
    kw = {
        "num_samples": 32,
        "batch_size": 8,
        "num_workers": 0,
        "image_size": 16,
        "channels": 1,
        "num_classes": 4,
        "views": views,
        "batch_augment": True,
        **kw,
    }
    return SyntheticDataModule(**kw)


def trainer(tmp_path, **kw):
    kw = {
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
        **kw,
    }
    return L.Trainer(default_root_dir=tmp_path, **kw)


# --- DINO loss and center -------------------------------------------------------------------------------------
def reference_dino_loss(student_output, teacher_output, center, ncrops, student_temp, teacher_temp):
    """DINOLoss.forward of facebookresearch/dino (main_dino.py), in float64."""
    student_out = (student_output.double() / student_temp).chunk(ncrops)
    teacher_out = F.softmax((teacher_output.double() - center.double()) / teacher_temp, dim=-1).chunk(2)
    total_loss, n_loss_terms = 0, 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue
            loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
            total_loss += loss.mean()
            n_loss_terms += 1
    return total_loss / n_loss_terms


@pytest.mark.parametrize("tt", [0.04, 0.07])
def test_dino_loss_matches_reference(tt):
    b, k, ncrops = 5, 11, 6
    s, t, c = torch.randn(ncrops * b, k), torch.randn(2 * b, k), 0.3 * torch.randn(1, k)
    expected = reference_dino_loss(s, t, c, ncrops, 0.1, tt).item()
    assert dino_loss(s.chunk(ncrops), t.chunk(2), c, 0.1, tt).item() == pytest.approx(expected, rel=1e-5)
    crit = DINOLoss(k, student_temp=0.1)
    crit.center.copy_(c)
    assert crit(s.chunk(ncrops), t.chunk(2), tt).item() == pytest.approx(expected, rel=1e-5)


def test_dino_loss_hand_computed_and_no_teacher_gradient():
    # one global pair, K = 2, temperatures 1, center 0: q = softmax(0, ln 3) = (1/4, 3/4), p = (1/2, 1/2)
    t = torch.tensor([[0.0, math.log(3)]]).requires_grad_(True)
    s = torch.zeros(1, 2, requires_grad=True)
    loss = dino_loss([s, s], [t, t], torch.zeros(1, 2), 1.0, 1.0)  # pairs (0, 1) and (1, 0), both = ln 2
    assert loss.item() == pytest.approx(math.log(2))
    loss.backward()
    assert t.grad is None
    assert s.grad is not None
    with pytest.raises(ValueError, match="temperatures must be > 0"):
        dino_loss([s], [t], torch.zeros(1, 2), 0.1, 0.0)


def test_center_update_formula():
    c = torch.ones(1, 3)
    t = torch.tensor([[0.0, 2.0, 4.0], [2.0, 2.0, 0.0]])
    torch.testing.assert_close(updated_center(c, t, 0.9), 0.9 * c + 0.1 * torch.tensor([[1.0, 2.0, 2.0]]))


def _center_worker(rank, world_size, rows):
    torch.manual_seed(rank)
    crit = DINOLoss(out_dim=4, center_momentum=0.9)
    crit.center.fill_(0.5)
    t = torch.randn(rows[rank], 4) + 3 * rank  # different rows and different counts per process
    crit.update_center(t)
    return t, crit.center.clone()


def test_center_update_in_ddp_is_the_global_mean():
    (t0, c0), (t1, c1) = run_distributed(_center_worker, [3, 5])
    expected = 0.9 * 0.5 + 0.1 * torch.cat([t0, t1]).mean(0, keepdim=True)
    torch.testing.assert_close(c0, expected)
    torch.testing.assert_close(c1, expected)
    # not the local mean
    assert not torch.allclose(c0, 0.9 * 0.5 + 0.1 * t0.mean(0, keepdim=True))


# --- iBOT and KoLeo ---------------------------------------------------------------------------------------------
def test_ibot_loss_hand_computed():
    mask = torch.tensor([[True, False, True], [False, False, False]])  # image 0: 2 masked patches, image 1: none
    teacher = torch.tensor([[0.0, 0.0], [math.log(3), 0.0]])  # q = (1/2, 1/2) and (3/4, 1/4)
    student = torch.tensor([[0.0, math.log(3)], [0.0, 0.0]])  # p = (1/4, 3/4) and (1/2, 1/2)
    ce1 = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    ce2 = math.log(2)
    expected = ((ce1 + ce2) / 2 + 0.0) / 2  # mean over image 0's masked patches; image 1 counts with 0
    got = ibot_loss(student, teacher, mask, torch.zeros(1, 2), student_temp=1.0, teacher_temp=1.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # the center is subtracted from the teacher logits
    shifted = ibot_loss(student, teacher + 5, mask, torch.full((1, 2), 5.0), 1.0, 1.0)
    assert shifted.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match=r"mask\.sum"):
        ibot_loss(student[:1], teacher[:1], mask, torch.zeros(1, 2))


def test_koleo_hand_computed():
    # unit vectors at 0, 60 and 180 degrees: nearest-neighbour distances 1, 1 and sqrt(3) (chords)
    angles = torch.tensor([0.0, 60.0, 180.0]) * math.pi / 180
    x = torch.stack([angles.cos(), angles.sin()], 1)
    expected = -(math.log(1) + math.log(1) + math.log(math.sqrt(3))) / 3
    assert koleo_loss(x).item() == pytest.approx(expected, abs=1e-5)
    assert koleo_loss(7 * x).item() == pytest.approx(expected, abs=1e-5)  # features are normalized first
    # spreading the points lowers it
    spread = torch.tensor([[1.0, 0.0], [-0.5, 0.866], [-0.5, -0.866]])
    assert koleo_loss(spread).item() < koleo_loss(x).item()
    with pytest.raises(ValueError, match="at least 2 rows"):
        koleo_loss(torch.randn(1, 4))


def test_block_masking_counts():
    g = torch.Generator().manual_seed(0)
    masks = block_masking(10, (6, 6), ratio=(0.1, 0.5), probability=0.5, generator=g)
    assert masks.shape == (10, 36)
    assert masks.dtype == torch.bool
    counts = masks.sum(1)
    assert int((counts > 0).sum()) == 5  # half the samples are masked
    targets = [int(r * 36) for r in torch.linspace(0.1, 0.5, 6)[1:].tolist()]
    assert all(0 < c <= t for c, t in zip(sorted(counts[counts > 0].tolist()), targets, strict=True))
    torch.testing.assert_close(block_masking(10, (6, 6), generator=torch.Generator().manual_seed(0)), masks)
    with pytest.raises(ValueError, match="ratio"):
        block_masking(2, (4, 4), ratio=(0.5, 1.0))


# --- the head and the ViT -------------------------------------------------------------------------------------------
def test_dino_head_normalized_bottleneck_and_weight_normalized_last_layer():
    head = DINOHead(6, hidden_dim=16, bottleneck_dim=4, out_dim=10)
    x = torch.randn(3, 6)
    z = F.normalize(head.mlp(x), dim=-1)
    w = head.last_layer.weight
    torch.testing.assert_close(w.norm(dim=1), torch.ones(10))  # g = 1: unit prototypes
    torch.testing.assert_close(head(x), z @ w.T)
    g = head.last_layer.parametrizations.weight.original0
    assert not g.requires_grad
    assert DINOHead(6, 16, 4, 10, norm_last_layer=False).last_layer.parametrizations.weight.original0.requires_grad


def test_vit_matches_timm_and_last_attention_matches_unfused_attention():
    vit = tiny_vit().eval()
    x = torch.randn(2, 1, 16, 16)
    m = vit.model
    torch.testing.assert_close(vit(x), m.forward_head(m.forward_features(x), pre_logits=True))
    captured = {}
    attn = m.blocks[-1].attn
    attn.fused_attn = False  # timm's explicit path: softmax(q k^T * scale) goes through attn_drop
    handle = attn.attn_drop.register_forward_hook(lambda mod, inp, out: captured.setdefault("a", inp[0]))
    m.forward_features(x)
    handle.remove()
    expected = captured["a"][:, :, 0, 1:].reshape(2, 2, 4, 4)
    torch.testing.assert_close(vit.last_attention(x), expected)
    assert vit(torch.randn(2, 1, 8, 8)).shape == (2, 32)  # a local crop: interpolated positions


def test_vit_mask_token_replaces_exactly_the_masked_patches():
    vit = tiny_vit().eval()
    vit.add_mask_token()
    x = torch.randn(2, 1, 16, 16)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [0, 5]] = True
    mask[1, 15] = True
    noise = unpatchify(mask.unsqueeze(-1).float() * torch.randn(2, 16, 16), 4, 1)  # new pixels in masked patches
    torch.testing.assert_close(vit.forward_tokens(x + noise, mask=mask), vit.forward_tokens(x, mask=mask))
    assert not torch.allclose(vit.forward_tokens(x + noise), vit.forward_tokens(x))
    assert patchify(noise, 4)[~mask].abs().max() == 0


# --- the method -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("ibot", "koleo"), [(0.0, 0.0), (1.0, 0.1)])
def test_teacher_gets_no_gradient(ibot, koleo):
    model = DINO(tiny_vit(), **HEAD, ibot_weight=ibot, koleo_weight=koleo, mask_probability=1.0)
    out = model.training_step((crops(), torch.zeros(4, dtype=torch.long)), 0)
    out["loss"].backward()
    teachers = [t for _, t in model.momentum_pairs()]
    assert all(p.grad is None and not p.requires_grad for t in teachers for p in t.parameters())
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)
    assert (model.backbone.mask_token is not None) == (ibot > 0)
    assert out["features"].shape == (4, 32)
    assert "dino_loss.center" in model.state_dict()
    assert ("ibot_loss.center" in model.state_dict()) == (ibot > 0)


def test_ibot_and_koleo_terms_are_added():
    torch.manual_seed(0)
    model = DINO(tiny_vit(), **HEAD, ibot_weight=0.5, koleo_weight=0.1, mask_probability=1.0)
    views = crops()
    logged = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, float(torch.as_tensor(value).detach()))
    loss = model.training_step((views, None), 0)["loss"]
    expected = logged["train/dino_loss"] + 0.5 * logged["train/ibot_loss"] + 0.1 * logged["train/koleo_loss"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert logged["train/ibot_loss"] > 0


def test_resnet_backbone_works_and_ibot_needs_a_vit():
    model = DINO(ResNet("resnet18", in_channels=1, image_size=16), **HEAD, koleo_weight=0.1)
    out = model.training_step((crops(), None), 0)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert out["features"].shape == (4, 512)
    with pytest.raises(ValueError, match=r"iBOT .* needs a ViT backbone"):
        DINO(ResNet("resnet18", in_channels=1, image_size=16), **HEAD, ibot_weight=1.0)
    with pytest.raises(ValueError, match="attention maps need a ViT"):
        model.attention_maps(torch.randn(1, 1, 16, 16))


def test_teacher_drops_no_paths():
    model = DINO(tiny_vit(drop_path_rate=0.5), **HEAD)
    assert any(getattr(m, "drop_prob", 0) > 0 for m in model.backbone.modules())
    assert all(getattr(m, "drop_prob", 0) == 0 for m in model.teacher_backbone.modules())


class _Record(L.Callback):
    def __init__(self):
        self.epochs, self.wd, self.temps = [], [], []

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs.append(
            {
                "last": [p.detach().clone() for p in pl_module.head.last_layer.parameters()],
                "mlp": [p.detach().clone() for p in pl_module.head.mlp.parameters()],
            }
        )

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.wd.append([g["weight_decay"] for g in optimizer.param_groups])
        self.temps.append(pl_module.current_teacher_temp())


def test_last_layer_frozen_in_epoch_one_and_schedules(tmp_path):
    model = DINO(
        tiny_vit(),
        **HEAD,
        norm_last_layer=False,
        warmup_teacher_temp_epochs=1,
        weight_decay_end=0.4,
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.04),
    )
    start = {
        "last": [p.detach().clone() for p in model.head.last_layer.parameters()],
        "mlp": [p.detach().clone() for p in model.head.mlp.parameters()],
    }
    rec = _Record()
    t = trainer(tmp_path, max_epochs=2, callbacks=[rec])  # 4 optimizer steps per epoch
    t.fit(model, datamodule=tiny_data())
    assert t.global_step == 8
    epoch1, epoch2 = rec.epochs
    assert all(
        torch.equal(a, b) for a, b in zip(start["last"], epoch1["last"], strict=True)
    )  # frozen (g and v) in epoch 1
    assert not any(torch.equal(a, b) for a, b in zip(start["mlp"], epoch1["mlp"], strict=True))  # the rest trained
    assert not any(torch.equal(a, b) for a, b in zip(epoch1["last"], epoch2["last"], strict=True))  # trained in epoch 2
    # weight decay: cosine from the optimizer's 0.04 to 0.4 on the decayed group, 0 on biases and norms
    assert [w[0] for w in rec.wd] == pytest.approx([cosine_momentum(s, 8, 0.04, 0.4) for s in range(8)])
    assert all(w[1] == 0 for w in rec.wd)
    # teacher temperature: 0.04 -> 0.07 over 1 epoch (4 steps), then constant
    assert rec.temps == pytest.approx([teacher_temperature(s, 4, 0.04, 0.07) for s in range(8)])
    assert rec.temps[0] == pytest.approx(0.04)
    assert rec.temps[4:] == pytest.approx([0.07] * 4)
    # the teacher followed the student (EMA) and the center moved
    assert int(model.teacher_updates) == 8
    assert model.dino_loss.center.abs().sum() > 0


def test_multicrop_views_sizes():
    preset = MultiCropViews(global_crops=2, local_crops=3, local_size=8)
    x = torch.randint(0, 256, (1, 16, 16), dtype=torch.uint8)
    views = preset.build(16, 1, (0.5,), (0.25,))(x)
    assert [tuple(v.shape) for v in views] == [(1, 16, 16)] * 2 + [(1, 8, 8)] * 3
    batched = preset.build_batched(16, 1, (0.5,), (0.25,))(torch.rand(4, 1, 16, 16))
    assert [tuple(v.shape) for v in batched] == [(4, 1, 16, 16)] * 2 + [(4, 1, 8, 8)] * 3
    assert MultiCropViews().views_for(224)[-1]["size"] == 96
    assert MultiCropViews().views_for(28)[-1]["size"] == 12
    v = MultiCropViews().views  # DINO's asymmetric blur and solarization
    assert (v[0]["blur_prob"], v[1]["blur_prob"], v[2]["blur_prob"]) == (1.0, 0.1, 0.5)
    assert (v[0]["solarize_prob"], v[1]["solarize_prob"]) == (0.0, 0.2)


def test_attention_maps_rendered_and_logged(tmp_path):
    attn = torch.rand(2, 3, 4, 4)
    grid = render_attention(torch.rand(2, 1, 16, 16), attn)
    assert grid.shape == (3, 2 * 17 + 1, 5 * 17 + 1)  # image | mean | 3 heads
    kept = keep_mass(torch.tensor([[0.5, 0.3], [0.15, 0.05]]), 0.6)  # 0.5 + 0.3 >= 0.6 of the mass
    assert kept.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    cb = AttentionMapLogger(num_images=2, every_n_epochs=1, out_dir=str(tmp_path / "img"))
    t = trainer(tmp_path, max_epochs=1, limit_train_batches=1, callbacks=[cb])
    t.fit(DINO(tiny_vit(), **HEAD), datamodule=tiny_data())
    with Image.open(cb.last_path) as im:  # image | mean | 2 heads, 2 rows of 16 px, enlarged and labelled
        assert im.size[0] >= 4 * 96
        assert im.size[1] >= 2 * 96
