"""TimeBudget: the run ends at the budget and the LR / momentum schedules end with it.

A fake clock makes every optimizer step take a set time, so the expected step counts are exact; two runs on the
real clock (an epoch longer than the budget, and first steps slowed as by a competing process) check that the
budget's own account of the run lands on the budget."""

import itertools
import math
import time
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import RichProgressBar

from lightning_ssl.callbacks import EndOfRun, KNNMonitor, TimeBudget
from lightning_ssl.callbacks import budget as budget_mod
from lightning_ssl.data import SimCLRViews, SyntheticDataModule
from lightning_ssl.methods import BYOL
from lightning_ssl.modules.backbones import SmallCNN


class FakeClock(L.Callback):
    """Each optimizer step takes ``seconds_per_step`` (a function of the step); nothing else takes time."""

    def __init__(self, monkeypatch, seconds_per_step) -> None:
        self.now = 1000.0
        self.dt = seconds_per_step if callable(seconds_per_step) else (lambda step: seconds_per_step)
        monkeypatch.setattr(budget_mod.time, "perf_counter", lambda: self.now)

    def on_train_batch_end(self, trainer, *args):
        self.now += self.dt(trainer.global_step)


class SlowStart(L.Callback):
    """A competing process during the first ``steps`` optimizer steps (it ends once the plan is made): each of
    those steps takes ``seconds`` longer."""

    def __init__(self, steps: int, seconds: float) -> None:
        self.steps, self.seconds = steps, seconds

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step <= self.steps:
            time.sleep(self.seconds)


class Trace(L.Callback):
    def __init__(self):
        self.lrs, self.momenta, self.max_epochs = [], [], []

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
        self.momenta.append(pl_module.current_momentum())
        self.max_epochs.append(trainer.max_epochs)


def run(tmp_path, budget, *callbacks, num_samples=64, batch_size=8, max_epochs=3, trainer_cls=L.Trainer, **trainer_kw):
    dm = SyntheticDataModule(
        num_samples=num_samples,
        num_classes=4,
        image_size=16,
        channels=1,
        batch_size=batch_size,
        num_workers=0,
        views=SimCLRViews(blur_prob=0),
        batch_augment=True,
        val_bank_size=32,
    )
    model = BYOL(SmallCNN(1, 16, width=4, stages=2), proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16, momentum=0.9)
    trace = Trace()
    kw = dict(check_val_every_n_epoch=100, num_sanity_val_steps=0)
    trainer = trainer_cls(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[*callbacks, budget, trace, KNNMonitor(k=[3], every_n_epochs=1)],
        default_root_dir=tmp_path,
        **{**kw, **trainer_kw},
    )
    trainer.fit(model, dm)
    return trainer, trace


def fake(monkeypatch, tmp_path, minutes, seconds_per_step=1.0, **kw):
    budget = TimeBudget(minutes, calibrate_steps=5, startup_steps=2, **kw.pop("budget", {}))
    trainer, trace = run(tmp_path, budget, FakeClock(monkeypatch, seconds_per_step), **kw)
    return trainer, budget, trace


def assert_schedules_end(trace, after: int = 0):
    """The LR and momentum schedules end at the last step, and from step ``after`` on the corrections bend the
    LR, never make it jump (a first plan shorter than twice the provisional warm-up shortens the warm-up)."""
    # cosine at its end, not cut mid-way: the last step's LR is the cosine's value one step before its end,
    # (pi / 2n)^2 of the peak for a cosine of n steps, n >= half the run (a short run under load has few steps)
    assert trace.lrs[-1] == pytest.approx(0.0, abs=(math.pi / len(trace.lrs)) ** 2 * max(trace.lrs))
    assert trace.momenta[-1] == pytest.approx(1.0)  # the EMA schedule ends too
    steps = torch.tensor(trace.lrs[after:])
    assert (steps.diff().abs() < 0.3 * max(trace.lrs)).all()


def test_budget_sets_the_steps_and_the_schedules_end_there(monkeypatch, tmp_path):
    trainer, budget, trace = fake(monkeypatch, tmp_path, minutes=1.0)  # 60 s at 1 s/step: 60 steps (7.5 epochs)
    assert budget.total_steps == 60
    assert trainer.global_step == 60
    assert trainer.current_epoch >= 7  # more epochs than the config's 3: the budget rules
    assert_schedules_end(trace)
    assert "val/knn_top1" in trainer.callback_metrics  # a final validation although check_val_every_n_epoch=100
    assert budget.epochs_done == pytest.approx(7.5)
    assert budget.seconds_used == pytest.approx(60.0)
    assert trace.max_epochs[-1] == 8  # the progress bar's epoch total: the planned epochs, not -1
    bar = RichProgressBar()
    bar._trainer = trainer
    assert bar._get_train_description(7).strip() == "Epoch 7/7"  # Lightning's bar showed "Epoch 7/-2"


def test_a_budget_without_other_limits_runs_without_lightnings_max_epochs_warning(monkeypatch, tmp_path, recwarn):
    from lightning_ssl.trainer import Trainer

    # Trainer(callbacks=[TimeBudget(...)]) as in the Python quickstart: no max_epochs / max_steps / max_time
    trainer, budget, trace = fake(monkeypatch, tmp_path, minutes=0.5, max_epochs=None, trainer_cls=Trainer)
    assert trainer.global_step == budget.total_steps == 30  # the budget, not Lightning's 1000 epochs, rules
    assert_schedules_end(trace)
    assert not [w for w in recwarn if "max_epochs" in str(w.message)]
    plain = Trainer(max_epochs=None, logger=False, enable_checkpointing=False)  # no budget: Lightning's rule
    assert plain.fit_loop.max_epochs is None
    endless = Trainer(max_epochs=-1, callbacks=[TimeBudget(1.0)], logger=False, enable_checkpointing=False)
    assert endless.fit_loop.max_epochs == -1  # a limit the user set is kept


def test_a_slower_machine_gets_fewer_steps(monkeypatch, tmp_path):
    trainer, budget, _ = fake(monkeypatch, tmp_path, minutes=1.0, seconds_per_step=2.0)
    assert budget.total_steps == 30
    assert trainer.global_step == 30


def test_a_slow_start_is_corrected_within_an_epoch_longer_than_the_budget(monkeypatch, tmp_path):
    """The first 12 steps take 3 s (a competing process), the rest 1 s; one epoch (100 steps) is longer than the
    60 s budget. Planned from the first steps alone the run would stop after 25 steps, at 40% of its minute
    (what a plan corrected only at epoch ends did); corrected as it runs it ends at the budget."""
    trainer, budget, trace = fake(
        monkeypatch, tmp_path, minutes=1.0, seconds_per_step=lambda step: 3.0 if step <= 12 else 1.0, num_samples=800
    )
    assert budget.first_plan == 5 + (60 - 5 * 3) // 3  # 20: what the slow start alone would give
    assert len(budget.plans) > 1
    assert trainer.global_step == 12 + (60 - 12 * 3)  # 36: every second of the budget used
    assert budget.seconds_used == pytest.approx(60.0)
    assert trainer.current_epoch == 1  # stopped inside the first epoch
    assert trace.max_epochs[-1] == 1
    assert_schedules_end(trace, after=budget.calibrate_steps)
    assert "val/knn_top1" in trainer.callback_metrics


def test_validations_are_set_aside(monkeypatch, tmp_path):
    """Each validation (every 2 epochs of 8 steps) takes 4 s on the fake clock: the budget keeps time for the ones
    to come and for the final one, so the run ends, validation included, at 60 s."""
    clock = FakeClock(monkeypatch, 1.0)

    class SlowValidation(L.Callback):
        def on_validation_end(self, trainer, pl_module):
            clock.now += 4.0

    budget = TimeBudget(1.0, calibrate_steps=5, startup_steps=2)
    trainer, trace = run(tmp_path, budget, clock, SlowValidation(), check_val_every_n_epoch=2)
    validations = trainer.global_step // 16 + (trainer.global_step % 16 != 0)  # periodic ones + the final one
    assert budget.seconds_used == pytest.approx(trainer.global_step + 4.0 * validations)
    assert 56.0 <= budget.seconds_used <= 60.0  # within one step (+ a validation's rounding) of the budget
    assert_schedules_end(trace)


def test_validations_between_counts_lightnings_schedule():
    t = SimpleNamespace(
        num_training_batches=10,
        num_val_batches=[3],
        accumulate_grad_batches=1,
        val_check_batch=10,
        check_val_every_n_epoch=2,
    )
    between = budget_mod.TimeBudget._validations_between
    assert between(t, 0, 20) == 0  # the validation at step 20 ends the run: it is the final one
    assert between(t, 0, 21) == 1
    assert between(t, 19, 61) == 3  # after steps 20, 40, 60
    t.val_check_batch = 5  # twice an epoch, every second epoch
    assert between(t, 0, 41) == 4
    t.check_val_every_n_epoch, t.val_check_batch = None, 7  # every 7 batches, across epochs
    assert between(t, 0, 22) == 3
    t.num_val_batches = []
    assert between(t, 0, 100) == 0


def test_budget_state_survives_a_restart():
    b = TimeBudget(5)
    b.total_steps, b.elapsed, b.val_seconds = 123, 42.0, 1.5
    c = TimeBudget(5)
    c.load_state_dict(b.state_dict())
    assert c.total_steps == 123
    assert c.elapsed == pytest.approx(42.0)
    assert c.val_seconds == pytest.approx(1.5)
    assert TimeBudget(None).state_dict() == {}


@pytest.mark.parametrize(
    "kw",
    [
        dict(minutes=0),
        dict(minutes=-1),
        dict(minutes=1, calibrate_steps=6, startup_steps=5),
        dict(minutes=1, calibrate_steps=2),
        dict(minutes=1, startup_steps=0),
        dict(minutes=1, replan_every=0),
        dict(minutes=1, tolerance=1.0),
        dict(minutes=1, hard_stop=1.0),
    ],
)
def test_bad_budgets_are_refused(kw):
    with pytest.raises(ValueError, match="budget"):
        TimeBudget(**kw)


# On the real clock. The assertion is the budget's own account of the run (from the first step to the end of the
# final validation) against the budget: the machine may be loaded, so no speed is assumed, and the tolerance is 5%
# or 1.5 s, whichever is larger (a step, a validation and the scheduling noise of a shared 2-core machine).
SECONDS = 24.0


def tolerance(seconds: float) -> float:
    return max(0.05 * seconds, 1.5)


@pytest.fixture
def one_thread():
    """One intra-op thread: two threads on a loaded 2-core machine make a step 20x slower and erratic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def real(tmp_path, *callbacks, **kw):
    budget = TimeBudget(SECONDS / 60)
    t = time.perf_counter()
    trainer, trace = run(
        tmp_path, budget, *callbacks, EndOfRun(), batch_size=16, num_sanity_val_steps=2, limit_val_batches=4, **kw
    )
    return trainer, budget, trace, time.perf_counter() - t


def test_real_clock_an_epoch_longer_than_the_budget(tmp_path, one_thread):
    trainer, budget, trace, wall = real(tmp_path, num_samples=40_000)  # 2,500 steps an epoch
    assert trainer.current_epoch == 1  # the run ended inside its first epoch...
    assert trainer.global_step < math.ceil(40_000 / 16)
    assert abs(budget.seconds_used - SECONDS) <= tolerance(SECONDS), (budget.seconds_used, budget.plans)
    assert budget.seconds_used <= wall  # the account is of this run's clock
    assert_schedules_end(trace)


def test_real_clock_first_steps_slowed(tmp_path, one_thread):
    # 30 steps 0.2 s slower: about 6 s of the 24 s budget, past the calibration (20 steps)
    _, budget, trace, wall = real(tmp_path, SlowStart(steps=30, seconds=0.2), num_samples=512)
    assert budget.first_plan is not None
    assert budget.total_steps > budget.first_plan  # the plan grew once the competitor was gone
    assert abs(budget.seconds_used - SECONDS) <= tolerance(SECONDS), (budget.seconds_used, budget.plans)
    assert budget.seconds_used <= wall
    assert_schedules_end(trace)


def test_resize_keeps_the_lr_continuous_and_ends_at_the_new_last_step():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = budget_mod.WarmupCosineLR(opt, warmup_steps=10, total_steps=100)
    lrs = []
    for step in range(1, 200):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
        if step in (30, 60):  # the plan grows by half, then shrinks
            sched.resize({30: 150, 60: 120}[step])
        if step == 120:
            break
    assert lrs[-1] == pytest.approx(0.0, abs=1e-9)  # the cosine ends at the last planned step
    assert max(abs(b - a) for a, b in itertools.pairwise(lrs[9:])) < 0.05  # no jump at either resize
    assert lrs[9] == pytest.approx(1.0)  # the warm-up kept its 10 steps


@pytest.mark.parametrize(("new_total", "warmup_end"), [(3000, 150), (125, 40)])
def test_resize_during_the_warm_up_goes_on_ramping(new_total, warmup_end):
    """The provisional 800-step plan warms up over 40 steps; at step 20 the real plan is known: 3,000 steps (a 150-
    step warm-up, 5%) or 125 (whose 5% warm-up is past: the ramp ends at its present slope, at step 40)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = budget_mod.WarmupCosineLR(opt, warmup_steps=0.05, total_steps=800)
    lrs = []
    for step in range(1, new_total + 1):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
        if step == 20:
            sched.resize(new_total)
    assert sched.warmup_steps == warmup_end
    assert max(lrs) == pytest.approx(1.0)
    assert lrs.index(max(lrs)) == warmup_end - 2  # lrs[i] is the LR after i + 1 steps: the ramp's top, warmup - 1
    assert max(abs(b - a) for a, b in itertools.pairwise(lrs)) <= 1 / 40 + 1e-9  # never steeper than the first ramp
    assert lrs[-1] == pytest.approx(0.0, abs=1e-9)
