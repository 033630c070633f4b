"""TimeBudget: the run ends at the budget and the LR / momentum schedules end with it (a fake clock makes every
optimizer step take exactly one second, so the expected step counts are exact)."""

import lightning as L
import pytest
import torch

from lightning_ssl.callbacks import KNNMonitor, TimeBudget
from lightning_ssl.callbacks import budget as budget_mod
from lightning_ssl.data import SimCLRViews, SyntheticDataModule
from lightning_ssl.methods import BYOL
from lightning_ssl.modules.backbones import SmallCNN


class FakeClock(L.Callback):
    def __init__(self, monkeypatch, seconds_per_step: float) -> None:
        self.now, self.dt = 1000.0, seconds_per_step
        monkeypatch.setattr(budget_mod.time, "perf_counter", lambda: self.now)

    def on_train_batch_end(self, *args):
        self.now += self.dt


class LRTrace(L.Callback):
    def __init__(self):
        self.lrs, self.momenta = [], []

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
        self.momenta.append(pl_module.current_momentum())


def run(monkeypatch, tmp_path, minutes, seconds_per_step=1.0, max_epochs=3, **kw):
    dm = SyntheticDataModule(
        num_samples=64,
        num_classes=4,
        image_size=16,
        channels=1,
        batch_size=8,
        num_workers=0,
        views=SimCLRViews(blur_prob=0),
        batch_augment=True,
        val_bank_size=32,
    )
    model = BYOL(SmallCNN(1, 16, width=4, stages=2), proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16, momentum=0.9)
    clock, trace, budget = FakeClock(monkeypatch, seconds_per_step), LRTrace(), TimeBudget(minutes, **kw)
    knn = KNNMonitor(k=[3], every_n_epochs=1)
    trainer = L.Trainer(
        max_epochs=max_epochs,
        check_val_every_n_epoch=100,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[clock, budget, trace, knn],
        default_root_dir=tmp_path,
    )
    trainer.fit(model, dm)
    return trainer, budget, trace


def test_budget_sets_the_steps_and_the_schedules_end_there(monkeypatch, tmp_path):
    trainer, budget, trace = run(
        monkeypatch, tmp_path, minutes=1.0, calibrate_steps=5
    )  # 60 s at 1 s/step: 60 steps (7.5 epochs)
    assert budget.total_steps == 60
    assert trainer.global_step == 60
    assert trainer.current_epoch >= 7  # more epochs than the config's 3: the budget rules
    assert trace.lrs[-1] == pytest.approx(0.0, abs=1e-3 * max(trace.lrs))  # cosine at its end, not cut mid-way
    assert trace.momenta[-1] == pytest.approx(1.0)  # the EMA schedule ends too
    steps = torch.tensor(trace.lrs[budget.calibrate_steps - 2 : budget.calibrate_steps + 3])
    assert (steps.diff().abs() < 0.3 * max(trace.lrs)).all()  # no jump at calibration
    assert "val/knn_top1" in trainer.callback_metrics  # a final validation although check_val_every_n_epoch=100
    assert budget.epochs_done == pytest.approx(7.5)


def test_a_slower_machine_gets_fewer_steps(monkeypatch, tmp_path):
    trainer, budget, _ = run(monkeypatch, tmp_path, minutes=1.0, seconds_per_step=2.0)
    assert budget.total_steps == 30
    assert trainer.global_step == 30


def test_budget_state_survives_a_restart():
    b = TimeBudget(5)
    b.total_steps, b.elapsed = 123, 42.0
    c = TimeBudget(5)
    c.load_state_dict(b.state_dict())
    assert c.total_steps == 123
    assert c.elapsed == pytest.approx(42.0)
    assert TimeBudget(None).state_dict() == {}


@pytest.mark.parametrize("kw", [dict(minutes=0), dict(minutes=-1), dict(minutes=1, calibrate_steps=1)])
def test_bad_budgets_are_refused(kw):
    with pytest.raises(ValueError, match="budget"):
        TimeBudget(**kw)
