import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_ssl.data import SimCLRViews, SyntheticDataModule
from lightning_ssl.losses import byol_loss, info_nce_loss, negative_cosine_similarity
from lightning_ssl.methods import BYOL, MoCo, MoCoV3, SimSiam
from lightning_ssl.modules.backbones import SmallCNN
from lightning_ssl.modules.momentum import cosine_momentum, make_teacher, update_momentum
from tests.helpers import run_distributed


def tiny_backbone():
    return SmallCNN(in_channels=1, image_size=16, width=4)


def tiny_data(**kw):
    kw = {
        "num_samples": 32,
        "batch_size": 8,
        "num_workers": 0,
        "image_size": 16,
        "channels": 1,
        "num_classes": 4,
        "views": SimCLRViews(min_scale=0.5, blur_prob=0.0),
        "batch_augment": True,
        **kw,
    }
    return SyntheticDataModule(**kw)


def trainer(tmp_path=None, **kw):
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


# --- the EMA mechanism ----------------------------------------------------------------------------------------
def test_update_momentum_formula_and_frozen_teacher():
    student = nn.Linear(3, 2)
    teacher = make_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    before = [p.clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    update_momentum(student, teacher, 0.9)
    for b, t, s in zip(before, teacher.parameters(), student.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        update_momentum(student, teacher, 1.5)


def test_cosine_momentum_schedule():
    assert cosine_momentum(0, 101, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine_momentum(50, 101, 0.996, 1.0) == pytest.approx(0.998)
    assert cosine_momentum(100, 101, 0.996, 1.0) == pytest.approx(1.0)
    assert cosine_momentum(30, 101, 0.99, 0.99) == pytest.approx(0.99)


@pytest.mark.parametrize("method", [BYOL, MoCo, MoCoV3])
def test_teacher_gets_no_gradient(method):
    kw = {"queue_size": 64} if method is MoCo else {}
    model = method(tiny_backbone(), proj_hidden_dim=16, proj_dim=8, **kw)
    views = [torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16)]
    out = model.training_step((views, torch.zeros(4, dtype=torch.long)), 0)
    out["loss"].backward()
    teachers = [t for _, t in model.momentum_pairs()]
    assert all(p.grad is None and not p.requires_grad for t in teachers for p in t.parameters())
    assert all(p.grad is not None for p in model.backbone.parameters())


class _CountingBYOL(BYOL):
    momenta: list

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        self.momenta.append(self.current_momentum())


def test_teacher_updated_once_per_optimizer_step_under_accumulation(tmp_path):
    model = _CountingBYOL(tiny_backbone(), proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16, momentum=0.9)
    model.momenta = []
    t = trainer(tmp_path, max_epochs=2, accumulate_grad_batches=2)  # 4 batches per epoch -> 2 optimizer steps
    t.fit(model, datamodule=tiny_data())
    assert t.global_step == 4
    assert int(model.teacher_updates) == 4
    assert t.callback_metrics["train/momentum"] > 0.9


def test_first_update_uses_base_momentum_and_teacher_moves(tmp_path):
    model = BYOL(tiny_backbone(), proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16, momentum=0.5, momentum_end=0.5)
    start_teacher = [p.clone() for p in model.teacher_backbone.parameters()]
    t = trainer(tmp_path, max_steps=1)
    t.fit(model, datamodule=tiny_data())
    # after one step: teacher = 0.5 * initial (== initial student) + 0.5 * updated student
    for t0, t1, s in zip(start_teacher, model.teacher_backbone.parameters(), model.backbone.parameters(), strict=True):
        torch.testing.assert_close(t1, 0.5 * t0 + 0.5 * s)


# --- losses -------------------------------------------------------------------------------------------------
def test_byol_and_simsiam_losses_hand_computed():
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    # cosines: 1/sqrt(2) and -1 -> BYOL: mean(2 - 2 cos) ; SimSiam: -mean(cos)
    assert byol_loss(p, z).item() == pytest.approx(((2 - math.sqrt(2)) + 4) / 2, abs=1e-6)
    assert negative_cosine_similarity(p, z).item() == pytest.approx(-(1 / math.sqrt(2) - 1) / 2, abs=1e-6)
    zz = z.clone().requires_grad_(True)
    negative_cosine_similarity(p.clone().requires_grad_(True), zz).backward()
    assert zz.grad is None  # stop-gradient on the target


def test_moco_v2_loss_matches_reference():
    q, k, queue = torch.randn(4, 8), torch.randn(4, 8), torch.randn(10, 8)
    qn, kn, qun = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1)
    # the paper's pseudocode: l_pos = q.k (N x 1), l_neg = q.queue (N x K), CE with label 0
    logits = torch.cat([(qn * kn).sum(1, keepdim=True), qn @ qun.T], 1) / 0.07
    expected = F.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
    got = info_nce_loss(q, k, 0.07, negatives=queue, in_batch_negatives=False)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_moco_v3_loss_is_2tau_times_symmetric_infonce():
    model = MoCoV3(tiny_backbone(), proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16, temperature=0.5).eval()
    x1, x2 = torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16)
    out = model.training_step(([x1, x2], torch.zeros(4)), 0)["loss"]
    q1, q2 = (model.predictor(model.projector(model.backbone(x))) for x in (x1, x2))
    k1, k2 = (model.teacher_projector(model.teacher_backbone(x)) for x in (x1, x2))

    def ctr(q, k):
        logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / 0.5
        return F.cross_entropy(logits, torch.arange(4))

    assert out.item() == pytest.approx((2 * 0.5 * (ctr(q1, k2) + ctr(q2, k1))).item(), rel=1e-5)


# --- MoCo's queue -----------------------------------------------------------------------------------------------
def test_queue_wraps_around_with_uneven_sizes():
    model = MoCo(tiny_backbone(), proj_hidden_dim=16, proj_dim=4, queue_size=10)
    batches = [torch.full((4, 4), float(i)) for i in range(1, 4)] + [torch.full((3, 4), 9.0)]  # 4+4+4+3 keys
    for b in batches:
        model.enqueue(b)
    # ring buffer of 10: keys 1..4 -> rows 0-3, 4-7; batch 3 -> rows 8,9,0,1; the last (3 keys) -> rows 2,3,4
    assert model.queue[:, 0].tolist() == [3, 3, 9, 9, 9, 2, 2, 2, 3, 3]
    assert int(model.queue_ptr) == 15 % 10
    with pytest.raises(ValueError, match="do not fit"):
        model.enqueue(torch.zeros(11, 4))


def test_queue_smaller_than_global_batch_is_rejected(tmp_path):
    model = MoCo(tiny_backbone(), proj_hidden_dim=16, proj_dim=4, queue_size=4)
    with pytest.raises(ValueError, match="queue_size=4 is smaller than the global batch"):
        trainer(tmp_path, max_steps=1).fit(model, datamodule=tiny_data())


def test_moco_queue_and_pointer_are_checkpointed():
    model = MoCo(tiny_backbone(), proj_hidden_dim=16, proj_dim=4, queue_size=10)
    model.enqueue(torch.ones(3, 4))
    sd = model.state_dict()
    assert "queue" in sd
    assert int(sd["queue_ptr"]) == 3


def _ddp_moco_enqueue(rank, world_size):
    torch.manual_seed(0)
    model = MoCo(tiny_backbone(), proj_hidden_dim=16, proj_dim=4, queue_size=8)
    model.enqueue(torch.full((2, 4), float(rank + 1)))
    x = torch.randn(4, 1, 16, 16)  # same on both ranks (same seed)
    model.eval()
    keys = model.keys(x[rank * 2 : (rank + 1) * 2])  # shuffled BN across the 2 processes
    return model.queue.clone(), int(model.queue_ptr), keys


def test_moco_gathers_keys_from_all_processes():
    results = run_distributed(_ddp_moco_enqueue)
    for queue, ptr, _ in results:
        assert ptr == 4  # 2 keys from each of 2 processes
        assert queue[:4, 0].tolist() == [1, 1, 2, 2]  # rank order
    torch.manual_seed(0)
    model = MoCo(tiny_backbone(), proj_hidden_dim=16, proj_dim=4, queue_size=8).eval()  # same init as the workers
    x = torch.randn(4, 1, 16, 16)
    # shuffled forward in eval mode gives the same keys as the plain forward, rows back in their own order
    full = F.normalize(model.teacher_projector(model.teacher_backbone(x)), dim=1)
    torch.testing.assert_close(torch.cat([r[2] for r in results]), full, rtol=1e-5, atol=1e-6)


# --- every method learns on tiny data ----------------------------------------------------------------------------
@pytest.mark.parametrize("method", [MoCo, MoCoV3, BYOL, SimSiam])
def test_methods_train_and_embed(method, tmp_path):
    kw = dict(proj_dim=8)
    if method is MoCo:
        kw.update(queue_size=16, proj_hidden_dim=16)
    elif method is SimSiam:
        kw.update(pred_hidden_dim=4)
    else:
        kw.update(proj_hidden_dim=16, pred_hidden_dim=16) if method is not MoCo else None
    model = method(tiny_backbone(), **kw)
    t = trainer(tmp_path, max_epochs=2)
    t.fit(model, datamodule=tiny_data())
    assert torch.isfinite(t.callback_metrics["train/loss"])
    assert model.embed(torch.randn(2, 1, 16, 16)).shape == (2, model.backbone.num_features)


# --- exact resume -----------------------------------------------------------------------------------------------
def _build(method):
    torch.manual_seed(0)
    if method is MoCo:
        return MoCo(tiny_backbone(), proj_hidden_dim=16, proj_dim=8, queue_size=20, momentum=0.99, momentum_end=0.999)
    return BYOL(tiny_backbone(), proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16, momentum=0.9)


@pytest.mark.parametrize("batch_augment", [True, False], ids=["device-aug", "worker-aug"])
@pytest.mark.parametrize("stop_at", [4, 6], ids=["epoch-end", "mid-epoch"])
@pytest.mark.parametrize("method", [MoCo, BYOL])
def test_exact_resume(method, stop_at, batch_augment, tmp_path):
    """12 optimizer steps straight == resuming at step N from the checkpoint the run wrote there (as if it had
    died right after writing it) and training to step 12. 4 batches per epoch: N=4 is an epoch end, N=6 is not."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    straight = _build(method)
    ckpt = ModelCheckpoint(
        dirpath=tmp_path,
        filename="step{step}",
        every_n_train_steps=stop_at,
        save_top_k=-1,
        auto_insert_metric_name=False,
    )
    trainer(tmp_path, max_epochs=3, enable_checkpointing=True, callbacks=[ckpt]).fit(
        straight, datamodule=tiny_data(batch_augment=batch_augment)
    )

    resumed = _build(method)
    t2 = trainer(tmp_path, max_epochs=3)
    t2.fit(
        resumed,
        datamodule=tiny_data(batch_augment=batch_augment),
        ckpt_path=tmp_path / f"step{stop_at}.ckpt",
        weights_only=True,
    )
    assert t2.global_step == 12
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:  # online and target/key networks, queue, queue pointer, update counter
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=lambda m, k=k: f"{k} differs after resume: {m}")


@pytest.mark.parametrize(("method", "old"), [("moco", "key_"), ("mocov3", "momentum_"), ("byol", "target_")])
def test_momentum_copies_are_teacher_and_older_checkpoints_still_load(method, old, tmp_path):
    """Every momentum copy is ``teacher_<part>``; a checkpoint written when MoCo's were ``key_*``, MoCo v3's
    ``momentum_*`` and BYOL's ``target_*`` loads into today's module, by Lightning and by ``load_state_dict``."""
    build = {
        "moco": lambda: MoCo(SmallCNN(in_channels=1, image_size=16, width=4), 16, 8, queue_size=16),
        "mocov3": lambda: MoCoV3(SmallCNN(in_channels=1, image_size=16, width=4), 16, 8, pred_hidden_dim=16),
        "byol": lambda: BYOL(SmallCNN(in_channels=1, image_size=16, width=4), 16, 8, pred_hidden_dim=16),
    }[method]
    model = build()
    teachers = {k for k in model.state_dict() if k.startswith(("teacher_backbone.", "teacher_projector."))}
    assert {k.split(".")[0] for k in model.state_dict() if "." in k and k.startswith("teacher_")} == {
        "teacher_backbone",
        "teacher_projector",
    }
    with torch.no_grad():
        for p in model.teacher_backbone.parameters():
            p.add_(1.0)  # the teacher differs from the student, so a mix-up would show
    old_state = {(old + k[len("teacher_") :] if k in teachers else k): v for k, v in model.state_dict().items()}
    assert not any(k.startswith(("teacher_backbone.", "teacher_projector.")) for k in old_state)
    fresh = build()
    fresh.load_state_dict(dict(old_state))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v, msg=lambda m, k=k: f"{k}: {m}")
    ckpt = {"state_dict": dict(old_state), "hyper_parameters": {}}
    again = build()
    again.on_load_checkpoint(ckpt)  # what Lightning calls before loading the state dict
    again.load_state_dict(ckpt["state_dict"])
    torch.testing.assert_close(again.teacher_backbone.state_dict(), model.teacher_backbone.state_dict())
