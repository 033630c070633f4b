"""Non-finite guard and collapse monitor."""

import math
import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_ssl.callbacks import CollapseMonitor, NonFiniteError, NonFiniteGuard
from lightning_ssl.callbacks.guards import embedding_std, rankme
from lightning_ssl.checkpoint import AtomicCheckpointIO, safe_load
from lightning_ssl.data import SyntheticDataModule
from lightning_ssl.methods import SimCLR
from lightning_ssl.modules.backbones import SmallCNN


class ExplodingSimCLR(SimCLR):
    """Its loss becomes NaN (or a gradient does) at one chosen step."""

    bad_step, bad = 3, "loss"

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        if self.trainer.global_step == self.bad_step:
            if self.bad == "loss":
                out["loss"] = out["loss"] * float("nan")
            else:
                self.projector[0].weight.register_hook(lambda g: g * float("inf"))
        return out


def _setup(tmp_path, guard, bad="loss", every_step_ckpt=True):
    torch.manual_seed(0)
    model = ExplodingSimCLR(SmallCNN(1, 16, width=4), proj_hidden_dim=16, proj_dim=8)
    model.bad = bad
    dm = SyntheticDataModule(num_samples=32, batch_size=8, num_workers=0, image_size=16, channels=1, val_bank_size=0)
    callbacks = [guard]
    if every_step_ckpt:
        callbacks.append(ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1, filename="s{step}"))
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        callbacks=callbacks,
        default_root_dir=tmp_path,
        plugins=[AtomicCheckpointIO()],
        enable_model_summary=False,
        limit_val_batches=0,
    )
    return model, dm, trainer


@pytest.mark.parametrize("bad", ["loss", "gradient"])
def test_nonfinite_stops_with_a_clear_message_and_no_nan_checkpoint(tmp_path, bad):
    model, dm, trainer = _setup(tmp_path, NonFiniteGuard("stop"), bad)
    with pytest.raises(
        NonFiniteError,
        match=r"ExplodingSimCLR at optimizer step 3 .*"
        + ("loss is nan" if bad == "loss" else "gradients are not finite"),
    ):
        trainer.fit(model, datamodule=dm)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    files = sorted(tmp_path.glob("*.ckpt"))
    assert len(files) == 3  # steps 1-3 saved, nothing after the failure
    for f in files:
        assert all(torch.isfinite(v).all() for v in safe_load(f)["state_dict"].values() if v.is_floating_point())


def test_nonfinite_skip_leaves_weights_and_optimizer_untouched(tmp_path):
    guard = NonFiniteGuard("skip")
    model, dm, trainer = _setup(tmp_path, guard, every_step_ckpt=False)
    snapshots = {}

    class Snap(L.Callback):
        def on_train_batch_start(self, tr, pl, batch, idx):
            snapshots[tr.global_step] = {k: v.clone() for k, v in pl.state_dict().items()}

    trainer.callbacks.append(Snap())
    with pytest.warns(UserWarning, match="skipped this optimizer step"):
        trainer.fit(model, datamodule=dm)
    assert guard.skipped == 1
    assert trainer.global_step == 8
    for k, v in snapshots[3].items():  # the step taken with the NaN loss changed nothing
        if "num_batches_tracked" not in k and "running" not in k:
            torch.testing.assert_close(snapshots[4][k], v, msg=k)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_guard_refuses_checkpoint_with_nan_weights(tmp_path):
    guard = NonFiniteGuard()
    model, dm, trainer = _setup(tmp_path, guard, every_step_ckpt=False)
    model.bad_step = -1
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "good.ckpt")
    with torch.no_grad():
        model.backbone.features[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="refusing to write a checkpoint"):
        trainer.save_checkpoint(tmp_path / "good.ckpt")
    assert all(
        torch.isfinite(v).all()
        for v in safe_load(tmp_path / "good.ckpt")["state_dict"].values()
        if v.is_floating_point()
    )


def test_nonfinite_guard_rejects_unknown_action():
    with pytest.raises(ValueError, match="action must be"):
        NonFiniteGuard("ignore")


# --- collapse -----------------------------------------------------------------------------------------------------
def test_collapse_statistics_on_constructed_features():
    g = torch.Generator().manual_seed(0)
    healthy = torch.randn(512, 64, generator=g)
    assert embedding_std(healthy) * math.sqrt(64) == pytest.approx(1.0, abs=0.05)  # 1/sqrt(D) per dimension
    assert rankme(healthy) > 50
    collapsed = torch.randn(1, 64, generator=g).repeat(512, 1) + 1e-4 * torch.randn(512, 64, generator=g)
    assert embedding_std(collapsed) * math.sqrt(64) < 0.01
    low_rank = torch.randn(512, 2, generator=g) @ torch.randn(2, 64, generator=g)  # dimensional collapse
    assert 1.5 < rankme(low_rank) < 2.5
    mon = CollapseMonitor()
    assert not mon.is_collapsed(mon.measure(healthy))
    assert mon.is_collapsed(mon.measure(collapsed))
    assert mon.is_collapsed(mon.measure(low_rank))


class _Constant(SimCLR):
    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        out["features"] = torch.ones_like(out["features"]) + 1e-6 * torch.randn_like(out["features"])
        return out


def test_collapse_monitor_warns_and_logs(tmp_path):
    model = _Constant(SmallCNN(1, 16, width=4), proj_hidden_dim=16, proj_dim=8)
    dm = SyntheticDataModule(num_samples=32, batch_size=8, num_workers=0, image_size=16, channels=1, val_bank_size=0)
    mon = CollapseMonitor(every_n_steps=2)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        callbacks=[mon],
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    with pytest.warns(UserWarning, match="looks collapsed"):
        trainer.fit(model, datamodule=dm)
    assert mon.last["embedding_std"] < 0.01
    assert "train/rankme" in trainer.callback_metrics
    healthy = CollapseMonitor(every_n_steps=2)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        callbacks=[healthy],
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message="(?!.*collapsed)")  # only collapse warnings turn into errors
        trainer.fit(SimCLR(SmallCNN(1, 16, width=8), proj_hidden_dim=16, proj_dim=8), datamodule=dm)
    assert healthy.last["embedding_std"] > 0.1


def _counting_mae():
    """A tiny MAE that counts its ``embed`` calls on training batches of 8 (the input-shape check at fit start
    embeds 2 images), and synthetic data in batches of 8 with one view per image, as the MAE configs have (two
    views would add the collapse monitor's LiDAR forwards)."""
    from lightning_ssl.data import ClassifierViews
    from lightning_ssl.methods import MAE
    from lightning_ssl.modules.vit import ViT

    class CountingMAE(MAE):
        calls = 0

        def embed(self, x):
            if len(x) == 8:
                CountingMAE.calls += 1
            return super().embed(x)

    vit = ViT(in_channels=1, image_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2)
    dm = SyntheticDataModule(
        num_samples=64, batch_size=8, num_workers=0, image_size=16, channels=1, val_bank_size=0, views=ClassifierViews()
    )
    return CountingMAE(vit, decoder_dim=16, decoder_depth=1, decoder_heads=2), dm


def test_collapse_monitor_adds_no_forwards_for_methods_without_step_features():
    """MAE's step gives no features: a window of several batches would cost an encoder forward per batch, so the
    monitor embeds the measuring step's batch only; SimCLR's step gives them, and the window spans batches. The
    first step is measured too (every run has the panels)."""
    mae, dm = _counting_mae()
    two_views = SyntheticDataModule(num_samples=64, batch_size=8, num_workers=0, image_size=16, channels=1)
    sizes = []
    for model, data in ((mae, dm), (SimCLR(SmallCNN(1, 16, width=4), proj_hidden_dim=16, proj_dim=8), two_views)):
        mon = CollapseMonitor(every_n_steps=4, window=32)
        mon.measure = lambda z, _m=mon.measure: sizes.append(len(z)) or _m(z)
        trainer = L.Trainer(
            max_epochs=1,
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            callbacks=[mon],
            enable_checkpointing=False,
            enable_model_summary=False,
            limit_val_batches=0,
        )
        trainer.fit(model, datamodule=data)
    assert type(mae).calls == 3  # steps 1, 4 and 8 of 8, nothing in between
    # MAE: the measuring batch; SimCLR: the first step's batch, then the window's batches of 8 since
    assert sizes == [8, 8, 8, 8, 24, 32]


def test_collapse_monitor_shares_the_probes_extra_forward():
    """On a masked-input method (MAE) both monitors need an encoder forward of their own; at coinciding steps they
    share one (``step_features`` stores it in the step's outputs). The default collapse interval is a multiple of
    every config's probe interval, so in the configs the collapse monitor adds no forward but its first step's."""
    from pathlib import Path

    import yaml

    from lightning_ssl.callbacks import OnlineLinearProbe

    mae, dm = _counting_mae()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        callbacks=[OnlineLinearProbe(num_classes=4, every_n_steps=2), CollapseMonitor(every_n_steps=4)],
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(mae, datamodule=dm)
    assert type(mae).calls == 5  # the probe's steps 2, 4, 6, 8; the monitor's 4 and 8 reuse theirs; its step 1

    default = CollapseMonitor().every_n_steps
    configs = Path(__file__).resolve().parents[1] / "configs"
    intervals = {
        str(p.relative_to(configs)): (yaml.safe_load(p.read_text()).get("probe") or {}).get("every_n_steps", 1)
        for p in configs.rglob("*.yaml")
    }
    assert all(default % n == 0 for n in intervals.values()), {k: v for k, v in intervals.items() if default % v}
