"""MAE: patches, masking, the loss on masked patches only, the visible-only encoder, lr scaling, reconstructions."""

from types import SimpleNamespace
from typing import ClassVar

import lightning as L
import pytest
import torch
from PIL import Image

from lightning_ssl.callbacks.images import MAEReconstructionLogger, publish, render_reconstructions
from lightning_ssl.data import ClassifierViews, SyntheticDataModule
from lightning_ssl.losses import mae_loss
from lightning_ssl.methods import MAE
from lightning_ssl.modules.masking import gather_tokens, patchify, random_masking, unpatchify
from lightning_ssl.modules.vit import ViT, sincos_pos_embed


def tiny_vit(**kw):
    kw = {"in_channels": 1, "image_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2, **kw}
    return ViT(**kw)


def tiny_mae(registers: int = 0, **kw):
    kw = {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2, **kw}
    return MAE(tiny_vit(num_registers=registers), **kw)


def tiny_data(**kw):
    kw = {
        "num_samples": 32,
        "batch_size": 8,
        "num_workers": 0,
        "image_size": 16,
        "channels": 1,
        "num_classes": 4,
        "views": ClassifierViews(min_scale=0.5),
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


# --- patches and masks ----------------------------------------------------------------------------------------
def test_patchify_layout_and_round_trip():
    x = torch.randn(2, 3, 8, 12)
    p = patchify(x, 4)  # grid 2 x 3
    assert p.shape == (2, 6, 48)
    # patch (row 1, column 2) holds that 4x4 block, pixels in (row, column, channel) order
    torch.testing.assert_close(p[1, 1 * 3 + 2], x[1, :, 4:8, 8:12].permute(1, 2, 0).flatten())
    torch.testing.assert_close(unpatchify(p, 4, 3, grid=(2, 3)), x)
    sq = torch.randn(3, 1, 16, 16)
    torch.testing.assert_close(unpatchify(patchify(sq, 4), 4, 1), sq)
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.randn(1, 1, 10, 10), 4)


def test_random_masking_keeps_exactly_k_and_ids_restore_inverts():
    b, n = 5, 49
    ids_keep, mask, ids_restore = random_masking(b, n, 0.75, generator=torch.Generator().manual_seed(0))
    k = int(49 * 0.25)  # 12, as int(N * (1 - ratio)) in the MAE code
    assert ids_keep.shape == (b, k)
    assert mask.shape == (b, n)
    assert ids_restore.shape == (b, n)
    assert (mask.sum(1) == n - k).all()
    for i in range(b):
        assert len(set(ids_keep[i].tolist())) == k  # distinct patches
        assert (mask[i, ids_keep[i]] == 0).all()  # the kept ones are exactly the unmasked ones
        assert sorted(ids_restore[i].tolist()) == list(range(n))  # a permutation
    # the shuffle is ids_restore's inverse, and its first k entries are the kept patches
    assert torch.equal(ids_restore.argsort(1)[:, :k], ids_keep)
    # the decoder's unshuffle puts every visible token back at its own position
    x = torch.arange(n, dtype=torch.float).repeat(b, 1).unsqueeze(-1) + 1  # token j holds j + 1
    shuffled = torch.cat([gather_tokens(x, ids_keep), torch.zeros(b, n - k, 1)], dim=1)
    restored = gather_tokens(shuffled, ids_restore)
    torch.testing.assert_close(restored, x * (1 - mask).unsqueeze(-1))
    # different samples get different masks
    assert not all(torch.equal(mask[0], mask[i]) for i in range(1, b))


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_impossible_mask_ratio_is_rejected(ratio):
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masking(2, 16, ratio)
    with pytest.raises(ValueError, match="mask_ratio"):
        tiny_mae(mask_ratio=ratio)


def test_sincos_pos_embed_matches_mae_formula():
    e = sincos_pos_embed(8, (2, 3))  # D/4 = 2 frequencies: 1 and 1/100
    assert e.shape == (7, 8)
    assert (e[0] == 0).all()
    # patch (row 1, column 2) = index 1 * 3 + 2 = 5 -> row 6 with the CLS row; first half: column, second: row
    w, h, om = 2.0, 1.0, torch.tensor([1.0, 0.01])
    expected = torch.cat([torch.sin(w * om), torch.cos(w * om), torch.sin(h * om), torch.cos(h * om)])
    torch.testing.assert_close(e[6], expected)


# --- the loss ---------------------------------------------------------------------------------------------------
def test_mae_loss_hand_computed():
    target = torch.tensor([[[1.0, 3.0], [0.0, 0.0], [2.0, 2.0]]])  # 1 image, 3 patches of 2 values
    pred = torch.tensor([[[0.0, 0.0], [5.0, 5.0], [1.0, 1.0]]])
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    # raw pixels: patch 0 mse (1 + 9) / 2 = 5, patch 2 mse 1; patch 1 is visible -> (5 + 1) / 2
    assert mae_loss(pred, target, mask, norm_pix=False).item() == pytest.approx(3.0)
    # normalized: patch 0 -> (1-2, 3-2) / sqrt(var=2) = (-0.707, 0.707), mse vs 0 = 0.5 (eps aside);
    # patch 2 is constant -> 0, mse vs 1 = 1
    assert mae_loss(pred, target, mask, norm_pix=True).item() == pytest.approx((0.5 + 1.0) / 2, rel=1e-5)


def test_changing_visible_predictions_leaves_the_loss_unchanged():
    pred, target = torch.randn(4, 16, 12), torch.randn(4, 16, 12)
    _, mask, _ = random_masking(4, 16, 0.75)
    base = mae_loss(pred, target, mask)
    visible = (1 - mask).unsqueeze(-1)
    assert mae_loss(pred + 100 * visible * torch.randn_like(pred), target, mask).item() == pytest.approx(base.item())
    assert mae_loss(pred + mask.unsqueeze(-1), target, mask).item() != pytest.approx(base.item())
    p = pred.clone().requires_grad_(True)
    mae_loss(p, target, mask).backward()
    assert (p.grad * visible).abs().max() == 0
    assert (p.grad * mask.unsqueeze(-1)).abs().max() > 0


# --- the model --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("registers", [0, 3], ids=["plain", "registers"])
def test_encoder_sees_only_the_visible_patches(registers):
    """Also with register tokens: ``ids_keep`` selects patches, the latent is CLS + the visible patches (the
    registers are dropped), and the decoder puts the predictions back in place."""
    model = tiny_mae(registers).eval()
    x = torch.randn(3, 1, 16, 16)
    ids_keep, mask, _ = random_masking(3, 16, 0.75, generator=torch.Generator().manual_seed(1))
    latent = model.backbone.forward_tokens(x, ids_keep=ids_keep)
    assert latent.shape == (3, 1 + 4, 32)
    # new pixels in the masked patches: the encoder output does not move
    noise = unpatchify(mask.unsqueeze(-1) * torch.randn(3, 16, 16), 4, 1)
    torch.testing.assert_close(model.backbone.forward_tokens(x + noise, ids_keep=ids_keep), latent)
    # ... but the loss does (the targets are there)
    g = torch.Generator().manual_seed(1)
    pred, target, m, _ = model.forward_mae(x, torch.Generator().manual_seed(1))
    pred2, target2, m2, _ = model.forward_mae(x + noise, g)
    assert torch.equal(m, m2)
    assert torch.equal(m, mask)
    torch.testing.assert_close(pred, pred2)
    assert mae_loss(pred2, target2, m2) != mae_loss(pred, target, m)


@pytest.mark.parametrize("registers", [0, 2], ids=["plain", "registers"])
def test_embed_uses_all_patches_and_training_step_runs(registers):
    model = tiny_mae(registers)
    x = torch.randn(4, 1, 16, 16)
    model.eval()
    torch.testing.assert_close(model.embed(x), model.backbone.forward_tokens(x)[:, 0])
    model.train()
    out = model.training_step(([x], torch.zeros(4, dtype=torch.long)), 0)
    out["loss"].backward()
    assert out["embed_input"] is x
    assert "features" not in out
    assert model.decoder.mask_token.grad is not None
    assert model.backbone.model.cls_token.grad is not None
    if registers:
        assert model.backbone.model.reg_token.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="ViT backbone"):
        MAE(torch.nn.Linear(4, 4))


def test_lr_is_base_lr_times_global_batch_over_256_with_adamw_095(tmp_path):
    model = tiny_mae(base_lr=0.01)
    t = trainer(tmp_path, max_steps=1, accumulate_grad_batches=2)
    t.fit(model, datamodule=tiny_data(batch_size=8))
    opt = t.optimizers[0]
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.9, 0.95)
    sched = t.lr_scheduler_configs[0].scheduler
    assert sched.base_lrs == [pytest.approx(0.01 * 8 * 2 / 256)] * len(opt.param_groups)


def test_reconstruction_callback_writes_a_grid(tmp_path):
    cb = MAEReconstructionLogger(num_images=3, every_n_epochs=1, out_dir=str(tmp_path / "img"))
    t = trainer(tmp_path, max_epochs=1, limit_train_batches=2, callbacks=[cb])
    t.fit(tiny_mae(), datamodule=tiny_data())
    assert cb.last_path is not None
    assert cb.last_path.exists()
    with Image.open(cb.last_path) as im:  # 3 columns (original | masked | reconstruction) x 3 rows of 16 px,
        assert min(im.size) >= 3 * 96  # enlarged to >= 96 px a tile, with labels and a title


def test_reconstruction_pastes_visible_patches():
    model = tiny_mae().eval()
    x = torch.randn(2, 1, 16, 16)
    masked, recon = model.reconstruct(x, torch.Generator().manual_seed(0))
    _, mask, _ = random_masking(2, 16, 0.75, generator=torch.Generator().manual_seed(0))
    vis = unpatchify((1 - mask).unsqueeze(-1).expand(-1, -1, 16), 4, 1).bool()
    torch.testing.assert_close(recon[vis], x[vis])
    torch.testing.assert_close(masked[vis], x[vis])
    assert (masked[~vis] == 0).all()


def test_images_go_to_wandb_loggers(tmp_path):
    """A picture is saved labelled and logged at Lightning's step and epoch (those of the last optimizer step: 7 and
    2 after 8 steps in 3 epochs), so it lines up with the metrics of that moment."""
    from lightning.pytorch.loggers import WandbLogger

    class Recording(WandbLogger):
        calls: ClassVar[list] = []

        def log_metrics(self, metrics, step=None):
            self.calls.append((metrics, step))

    logger = Recording(save_dir=str(tmp_path), offline=True)
    progress = SimpleNamespace(current=SimpleNamespace(started=3))
    fake = SimpleNamespace(
        loggers=[logger],
        log_dir=str(tmp_path),
        default_root_dir=str(tmp_path),
        current_epoch=3,  # Lightning's, once training has ended
        global_step=8,
        fit_loop=SimpleNamespace(epoch_progress=progress),
        datamodule=None,
    )
    grid = render_reconstructions(*(torch.rand(2, 1, 8, 8) for _ in range(3)))
    path = publish(fake, grid, "mae_reconstruction", None, "caption", ["original", "masked", "reconstruction"])
    assert path == tmp_path / "images" / "mae_reconstruction_epoch002.png"
    with Image.open(path) as im:
        assert min(im.size) >= 2 * 96
    ((metrics, step),) = Recording.calls
    assert step == 7
    assert metrics["epoch"] == 2
    (image,) = metrics["images/mae_reconstruction"]
    assert image._caption == "caption - epoch 2, step 7"
