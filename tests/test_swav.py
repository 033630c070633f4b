"""SwAV: Sinkhorn-Knopp and the swapped-prediction loss against the reference code and hand-computed values; the
prototypes (normalized, frozen in epoch 1), the queue (start epoch, used once full, checkpointed) and exact resume.
DDP equivalence (with and without the queue): tests/test_ddp_equivalence.py."""

import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from lightning_ssl.data import MultiCropViews
from lightning_ssl.losses import sinkhorn, swav_loss
from lightning_ssl.methods import SwAV
from lightning_ssl.modules.backbones import SmallCNN
from tests.test_momentum_methods import tiny_data, trainer


def reference_sinkhorn(out, epsilon=0.05, iterations=3):
    """distributed_sinkhorn of facebookresearch/swav (main_swav.py) on one process, in float64."""
    Q = torch.exp(out.double() / epsilon).t()
    B, K = Q.shape[1], Q.shape[0]
    Q /= torch.sum(Q)
    for _ in range(iterations):
        Q /= torch.sum(Q, dim=1, keepdim=True)
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


def reference_loss(output, bs, n_crops, crops_for_assign, temperature=0.1):
    """The loss loop of main_swav.py's train(), without the queue, in float64."""
    loss = 0
    for crop_id in crops_for_assign:
        q = reference_sinkhorn(output[bs * crop_id : bs * (crop_id + 1)].detach())[-bs:]
        subloss = 0
        for v in [v for v in range(n_crops) if v != crop_id]:
            x = output[bs * v : bs * (v + 1)].double() / temperature
            subloss -= torch.mean(torch.sum(q * F.log_softmax(x, dim=1), dim=1))
        loss += subloss / (n_crops - 1)
    return loss / len(crops_for_assign)


def cnn():
    return SmallCNN(1, 16, width=4)


def crops(b=8):
    return [torch.randn(b, 1, 16, 16), torch.randn(b, 1, 16, 16), torch.randn(b, 1, 8, 8), torch.randn(b, 1, 8, 8)]


def test_sinkhorn_matches_reference_and_balances_the_batch():
    torch.manual_seed(0)
    scores = F.normalize(torch.randn(32, 8), dim=1) @ F.normalize(torch.randn(5, 8), dim=1).T  # cosine scores
    q = sinkhorn(scores)
    torch.testing.assert_close(q.double(), reference_sinkhorn(scores), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(q.sum(1), torch.ones(32))  # every sample: a distribution over prototypes
    # with many iterations the prototypes share the batch equally: 32 / 5 samples each
    torch.testing.assert_close(sinkhorn(scores, iterations=50).sum(0), torch.full((5,), 32 / 5), rtol=1e-4, atol=1e-4)


def test_sinkhorn_hand_computed():
    # 2 samples, 2 prototypes, eps = 1: exp(scores) = [[e, 1], [1, e]] is already balanced -> rows / (e + 1)
    q = sinkhorn(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), epsilon=1.0, iterations=1)
    e = math.e
    torch.testing.assert_close(q, torch.tensor([[e, 1.0], [1.0, e]]) / (e + 1))


def test_swav_loss_hand_computed_and_matches_reference():
    # two crops, K = 2: codes one-hot; loss = (CE(q0, s1) + CE(q1, s0)) / 2 with scores / tau
    s0, s1 = torch.tensor([[0.2, 0.0]]), torch.tensor([[0.0, 0.1]])
    q0, q1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    ce = lambda q, s: -(q * F.log_softmax(s / 0.1, dim=1)).sum()  # noqa: E731
    expected = (ce(q0, s1) + ce(q1, s0)) / 2
    assert swav_loss([s0, s1], [q0, q1]).item() == pytest.approx(expected.item(), rel=1e-6)
    assert expected.item() == pytest.approx((math.log(1 + math.e) + math.log(1 + math.e**2)) / 2, rel=1e-6)

    torch.manual_seed(0)
    bs, n_crops = 8, 4
    output = F.normalize(torch.randn(bs * n_crops, 6), dim=1) @ F.normalize(torch.randn(10, 6), dim=1).T
    scores = list(output.chunk(n_crops))
    codes = [sinkhorn(s) for s in scores[:2]]
    want = reference_loss(output, bs, n_crops, [0, 1])
    assert swav_loss(scores, codes).item() == pytest.approx(want.item(), rel=1e-5)


def test_codes_carry_no_gradient_and_bad_settings():
    scores = torch.randn(4, 3, requires_grad=True)
    assert not sinkhorn(scores).requires_grad
    with pytest.raises(ValueError, match="sinkhorn epsilon must be > 0"):
        sinkhorn(scores, epsilon=0.0)
    with pytest.raises(ValueError, match="at least 2 crops"):
        swav_loss([scores], [scores])


def test_prototypes_normalized_every_step_and_frozen_in_the_first_epoch():
    torch.manual_seed(0)
    model = SwAV(cnn(), proj_hidden_dim=16, proj_dim=8, num_prototypes=6, freeze_prototypes_epochs=1)
    with torch.no_grad():
        model.prototypes.weight.mul_(3.0)
    model.training_step((crops(), torch.zeros(8)), 0)["loss"].backward()
    torch.testing.assert_close(model.prototypes.weight.norm(dim=1), torch.ones(6))
    for epoch, frozen in ((0, True), (1, False)):
        model.prototypes.weight.grad = torch.ones_like(model.prototypes.weight)
        with mock.patch.object(SwAV, "current_epoch", new_callable=mock.PropertyMock, return_value=epoch):
            model.on_before_optimizer_step(None)
        assert (model.prototypes.weight.grad is None) == frozen
        assert model.projector[0].weight.grad is not None  # only the prototypes are held


def test_queue_starts_at_its_epoch_and_is_used_once_full():
    torch.manual_seed(0)
    model = SwAV(cnn(), proj_hidden_dim=16, proj_dim=8, num_prototypes=6, queue_size=12, queue_start_epoch=0)
    calls = []
    real = model._codes.__func__

    def spy(self, scores, z):
        before = int(self.queue_count)
        out = real(self, scores, z)
        calls.append((before, int(self.queue_count)))
        return out

    model._codes = spy.__get__(model)
    batch = (crops(4), torch.zeros(4))
    for _ in range(4):
        model.training_step(batch, 0)
    assert calls == [(0, 4), (4, 8), (8, 12), (12, 12)]
    assert int(model.queue_ptr) == 16 % 12
    # once full, the queue joins the Sinkhorn problem: the codes differ from the batch-only codes
    z = F.normalize(model.projector(model.backbone(batch[0][0])), dim=1)
    s = model.prototypes(z).detach()
    with_queue = model._codes([s, s, s, s], [z, z, z, z])[0]
    assert not torch.allclose(with_queue, sinkhorn(s), atol=1e-4)
    late = SwAV(cnn(), proj_hidden_dim=16, proj_dim=8, num_prototypes=6, queue_size=12, queue_start_epoch=3)
    late.training_step(batch, 0)
    assert int(late.queue_count) == 0  # epoch 0 < 3: nothing stored yet
    assert "queue" in late.state_dict()
    assert "queue" not in SwAV(cnn(), proj_dim=8, num_prototypes=6).state_dict()


def test_exact_resume_with_queue_and_frozen_prototypes(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    views = MultiCropViews(global_crops=2, local_crops=2, local_size=8, global_blur=(0.0, 0.0), local_blur=0.0)

    def build():
        torch.manual_seed(0)
        return SwAV(cnn(), proj_hidden_dim=16, proj_dim=8, num_prototypes=6, queue_size=16, queue_start_epoch=1)

    straight = build()
    ckpt = ModelCheckpoint(
        dirpath=tmp_path, filename="step{step}", every_n_train_steps=6, save_top_k=-1, auto_insert_metric_name=False
    )
    trainer(tmp_path, max_epochs=2, enable_checkpointing=True, callbacks=[ckpt]).fit(
        straight, datamodule=tiny_data(views=views)
    )
    resumed = build()
    t2 = trainer(tmp_path, max_epochs=2)
    t2.fit(resumed, datamodule=tiny_data(views=views), ckpt_path=tmp_path / "step6.ckpt", weights_only=True)
    assert t2.global_step == 8
    assert int(straight.queue_count) == 16
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:  # backbone, head, prototypes, queue, its pointer and fill count
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=lambda m, k=k: f"{k} differs after resume: {m}")
