"""I-JEPA: multi-block masks, the loss against hand-computed values and the reference's formula, the predictor,
what each encoder sees, the EMA target encoder and exact resume. DDP equivalence (masks drawn for the whole batch):
tests/test_ddp_equivalence.py."""

import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

import lightning_ssl.methods.ijepa as ijepa_module
from lightning_ssl.data import ClassifierViews
from lightning_ssl.losses import ijepa_loss
from lightning_ssl.methods import IJEPA
from lightning_ssl.methods.ijepa import JEPAPredictor
from lightning_ssl.modules.multiblock import block_size, multiblock_masks
from lightning_ssl.modules.vit import ViT
from tests.test_momentum_methods import tiny_data, trainer


def vit(**kw):
    kw = {"in_channels": 1, "image_size": 16, "patch_size": 4, "embed_dim": 16, "depth": 2, "num_heads": 2, **kw}
    return ViT(**kw)


def ijepa(registers: int = 0, **kw):
    kw = {"predictor_dim": 16, "predictor_depth": 1, "predictor_heads": 2, "min_context": 2, **kw}
    return IJEPA(vit(num_registers=registers), **kw)


# --- masks ----------------------------------------------------------------------------------------------------
def test_block_size_as_the_reference_computes_it():
    g = torch.Generator().manual_seed(0)
    assert block_size((14, 14), (0.15, 0.15), (1.0, 1.0), g) == (5, 5)  # int(196 * 0.15) = 29 -> round(sqrt(29))
    assert block_size((14, 14), (0.2, 0.2), (2.0, 2.0), g) == (
        9,
        4,
    )  # 39 patches, h/w = 2: round(sqrt(78)), round(sqrt(19.5))
    assert block_size((7, 7), (1.0, 1.0), (1.0, 1.0), g) == (6, 6)  # never the whole grid


def test_multiblock_masks_shapes_blocks_and_disjoint_context():
    g = torch.Generator().manual_seed(0)
    context, targets = multiblock_masks(16, (14, 14), generator=g)
    b, m, kt = targets.shape
    assert (b, m) == (16, 4)
    assert context.shape[0] == 16
    assert context.shape[1] >= 10
    for i in range(b):
        assert torch.all(context[i][1:] > context[i][:-1])  # raster order, no repeats
        for j in range(m):
            rows, cols = targets[i, j] // 14, targets[i, j] % 14
            h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
            assert h * w == kt
            assert len(set(targets[i, j].tolist())) == kt
            assert not set(targets[i, j].tolist()) & set(context[i].tolist())  # the context never sees a target
    again = multiblock_masks(16, (14, 14), generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], context)
    assert torch.equal(again[1], targets)


def test_target_area_and_aspect_follow_the_ranges():
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        _, targets = multiblock_masks(2, (14, 14), generator=g)
        t = targets[0, 0]
        rows, cols = t // 14, t % 14
        h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert 0.1 <= h * w / 196 <= 0.22
        assert 0.5 <= h / w <= 2.0


def test_crowded_grid_still_gives_a_context():
    # 4 large targets on a 4x4 grid leave little room: the sampler relaxes constraints instead of looping forever
    context, _targets = multiblock_masks(
        4, (4, 4), target_scale=(0.4, 0.5), min_keep=4, generator=torch.Generator().manual_seed(0)
    )
    assert context.shape[0] == 4
    assert context.shape[1] >= 1


# --- loss -----------------------------------------------------------------------------------------------------
def test_loss_hand_computed():
    target = torch.tensor([[1.0, 3.0]])  # layer norm -> (-1, 1) / sqrt(1 + 1e-5)
    pred = torch.tensor([[0.5, 0.0]])
    s = 1 / math.sqrt(1 + 1e-5)
    d1, d2 = 0.5 + s, s  # |pred - target|
    smooth = lambda d: d - 0.5 if d >= 1 else 0.5 * d * d  # noqa: E731
    assert ijepa_loss(pred, target).item() == pytest.approx((smooth(d1) + smooth(d2)) / 2, rel=1e-6)
    assert ijepa_loss(pred, target, kind="mse").item() == pytest.approx((d1**2 + d2**2) / 2, rel=1e-6)


def test_loss_matches_the_reference_code():
    torch.manual_seed(0)
    h = torch.randn(2, 1 + 16, 8)[:, 1:]  # target encoder tokens
    masks = [torch.randint(0, 16, (2, 3)) for _ in range(4)]  # 4 target blocks of 3 patches
    z = torch.randn(4 * 2, 3, 8)  # predictions in the reference's (block-major) order
    # reference (src/train.py): h = layer_norm(h); h = apply_masks(h, masks_pred); loss = smooth_l1(z, h)
    hn = F.layer_norm(h, (8,))
    ref = F.smooth_l1_loss(z, torch.cat([torch.gather(hn, 1, m.unsqueeze(-1).expand(-1, -1, 8)) for m in masks]))
    # ours: (B, M, K_t, D), normalization inside the loss
    ids = torch.stack(masks, dim=1)  # (B, M, 3)
    ours_t = torch.stack([torch.gather(h, 1, ids[:, j].unsqueeze(-1).expand(-1, -1, 8)) for j in range(4)], dim=1)
    ours_p = z.view(4, 2, 3, 8).transpose(0, 1)
    assert ijepa_loss(ours_p, ours_t).item() == pytest.approx(ref.item(), rel=1e-6)


# --- predictor and encoders -------------------------------------------------------------------------------------
def test_predictor_runs_each_target_block_separately():
    torch.manual_seed(0)
    pred = JEPAPredictor(16, (4, 4), dim=16, depth=2, num_heads=2).eval()
    context, ctx_ids = torch.randn(2, 5, 16), torch.tensor([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
    targets = torch.tensor([[[10, 11], [12, 13]], [[10, 14], [15, 11]]])
    out = pred(context, ctx_ids, targets)
    assert out.shape == (2, 2, 2, 16)
    moved = targets.clone()
    moved[:, 1] = torch.tensor([[0, 15], [1, 2]])  # change block 1 only
    torch.testing.assert_close(pred(context, ctx_ids, moved)[:, 0], out[:, 0])  # block 0's prediction is its own
    assert not torch.allclose(pred(context, ctx_ids, moved)[:, 1], out[:, 1])


@pytest.mark.parametrize("registers", [0, 2], ids=["plain", "registers"])
def test_context_encoder_never_sees_target_pixels_and_teacher_gets_no_gradient(registers):
    """Also with register tokens: the context encoder's ``ids_keep`` and the targets' patch indices address the
    patches, never the registers (which the ViT drops from its output)."""
    torch.manual_seed(0)
    model = ijepa(registers).eval()
    x = torch.randn(2, 1, 16, 16)
    context_ids = torch.tensor([[0, 1, 4, 5], [2, 3, 6, 7]])
    target_ids = torch.tensor([[[10, 11]], [[14, 15]]])
    with mock.patch.object(ijepa_module, "multiblock_masks", return_value=(context_ids, target_ids)):
        out = model.training_step(([x], torch.zeros(2)), 0)
        x2 = x.clone()
        x2[:, :, 8:, 8:] += 5.0  # patches 10, 11, 14, 15 (rows 2-3, columns 2-3): targets, never context
        out2 = model.training_step(([x2], torch.zeros(2)), 0)
    # the loss changes only through the targets (the teacher sees the full image); predictions are identical
    ctx = model.backbone.forward_tokens(x, ids_keep=context_ids)[:, 1:]
    ctx2 = model.backbone.forward_tokens(x2, ids_keep=context_ids)[:, 1:]
    torch.testing.assert_close(ctx, ctx2)
    assert out["loss"].item() != pytest.approx(out2["loss"].item())
    out["loss"].backward()
    assert all(p.grad is None for p in model.teacher_backbone.parameters())
    assert model.backbone.model.patch_embed.proj.weight.grad is not None
    assert (model.backbone.model.reg_token is not None) == (registers > 0)
    if registers:
        assert model.backbone.model.reg_token.grad.abs().sum() > 0  # the registers take part in the context encoder
    torch.testing.assert_close(out["features"], model.embed(x))  # embed: the target encoder on the full image
    from lightning_ssl.modules.pretrained import backbone_prefix

    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    assert backbone_prefix(ckpt) == "teacher_backbone."  # export / evaluation from a checkpoint take it too


def test_exact_resume_with_the_ema_target_encoder(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def build():
        torch.manual_seed(0)
        return ijepa(momentum=0.9, momentum_end=0.99)

    data = lambda: tiny_data(views=ClassifierViews(min_scale=0.5))  # noqa: E731
    straight = build()
    ckpt = ModelCheckpoint(
        dirpath=tmp_path, filename="step{step}", every_n_train_steps=6, save_top_k=-1, auto_insert_metric_name=False
    )
    trainer(tmp_path, max_epochs=2, enable_checkpointing=True, callbacks=[ckpt]).fit(straight, datamodule=data())
    resumed = build()
    t2 = trainer(tmp_path, max_epochs=2)
    t2.fit(resumed, datamodule=data(), ckpt_path=tmp_path / "step6.ckpt", weights_only=True)
    assert t2.global_step == 8
    assert int(straight.teacher_updates) == 8
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:  # context encoder, predictor, target encoder, update counter (masks: reseeded per batch)
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=lambda m, k=k: f"{k} differs after resume: {m}")


def test_predictor_initialised_as_the_reference():
    """facebookresearch/ijepa src/helper.py init_model: trunc_normal(std 0.02) Linear weights, zero biases,
    LayerNorms at 1 / 0 (eps 1e-6); the predictor's heads are the encoder's."""
    torch.manual_seed(0)
    model = IJEPA(vit(embed_dim=64, num_heads=4), predictor_dim=128, predictor_depth=4, min_context=2)
    pred = model.predictor
    linears = [m for m in pred.modules() if isinstance(m, torch.nn.Linear)]
    weights = torch.cat([m.weight.flatten() for m in linears])
    assert weights.std().item() == pytest.approx(0.02, rel=0.05)
    assert abs(weights.mean().item()) < 1e-3
    assert all(torch.count_nonzero(m.bias) == 0 for m in linears)
    norms = [m for m in pred.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms
    assert all(m.eps == 1e-6 for m in norms)
    assert all(blk.attn.num_heads == 4 for blk in pred.blocks)


def test_ema_momentum_is_linear_in_the_step():
    """src/train.py: ema[0] + i * (ema[1] - ema[0]) / (ipe * num_epochs * ipe_scale)."""
    model = ijepa()

    class T:
        global_step, estimated_stepping_batches = 0, 11

    model._trainer = T()
    values = []
    for step in range(11):
        T.global_step = step
        values.append(model.current_momentum())
    assert values == pytest.approx([0.996 + step * 0.004 / 10 for step in range(11)])


def test_encoders_without_a_cls_token_train():
    model = IJEPA(
        vit(class_token=False, pool="avg", pos_embed="sincos"), predictor_dim=16, predictor_depth=1, min_context=2
    )
    model.log = lambda *a, **k: None
    out = model.training_step(([torch.randn(4, 1, 16, 16)], None), 0)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert out["features"].shape == (4, 16)
    assert model.backbone.model.cls_token is None
