"""NNCLR: nearest neighbours, the loss against hand-computed values and the paper's formula, the support set (a
queue of the first view's projections, checkpointed) and exact resume. DDP equivalence (gathered negatives, queue
filled from all processes): tests/test_ddp_equivalence.py."""

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_ssl.losses import nearest_neighbours, nnclr_loss
from lightning_ssl.methods import NNCLR
from lightning_ssl.modules.backbones import SmallCNN
from tests.test_momentum_methods import tiny_data, trainer


def cnn():
    return SmallCNN(1, 16, width=4)


def test_nearest_neighbours_by_cosine():
    support = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-1.0, -1.0]])
    z = torch.tensor([[5.0, 1.0], [0.1, 2.0], [-2.0, -1.5], [10.0, 0.0]])
    torch.testing.assert_close(nearest_neighbours(z, support), support[[0, 1, 2, 0]])


def test_loss_hand_computed():
    # B = 2, unit vectors; tau = 1: InfoNCE(a, b) = mean_i -log softmax(a_i . b)_i
    p_1, p_2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    n_1 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # the second image's neighbour looks like the first image
    n_2 = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # n_1 vs p_2: row 0 logits (1, 0) -> -log(e / (e + 1));
    # row 1 logits (1, 0), positive is column 1 -> -log(1 / (e + 1))
    first = (-math.log(math.e / (math.e + 1)) - math.log(1 / (math.e + 1))) / 2
    # n_2 vs p_1: row 0 logits (0, 1), positive column 0 -> -log(1 / (1 + e)); row 1 -> -log(e / (1 + e))
    second = first
    assert nnclr_loss(p_1, p_2, n_1, n_2, temperature=1.0).item() == pytest.approx((first + second) / 2, rel=1e-6)


def test_loss_matches_the_papers_formula_and_neighbours_get_no_gradient():
    torch.manual_seed(0)
    p_1, p_2 = torch.randn(8, 6, requires_grad=True), torch.randn(8, 6, requires_grad=True)
    n_1, n_2 = torch.randn(8, 6, requires_grad=True), torch.randn(8, 6, requires_grad=True)

    def paper(nn, p, tau=0.1):  # eq. 2 with the predictor: -log exp(NN(z_i).p_i / tau) / sum_k exp(NN(z_i).p_k / tau)
        logits = F.normalize(nn, dim=1) @ F.normalize(p, dim=1).T / tau
        return (-(logits.diagonal() - logits.logsumexp(dim=1))).mean()

    loss = nnclr_loss(p_1, p_2, n_1, n_2)
    assert loss.item() == pytest.approx(((paper(n_1, p_2) + paper(n_2, p_1)) / 2).item(), rel=1e-5)
    loss.backward()
    assert n_1.grad is None
    assert n_2.grad is None
    assert p_1.grad is not None
    assert p_2.grad is not None


def test_step_takes_neighbours_from_the_queue_then_enqueues_view_one():
    torch.manual_seed(0)
    model = NNCLR(cnn(), proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16, queue_size=10).eval()
    x_1, x_2 = torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16)
    support = model.queue.clone()
    out = model.training_step(([x_1, x_2], torch.zeros(4)), 0)
    z_1, z_2 = model.projector(model.backbone(x_1)), model.projector(model.backbone(x_2))
    p_1, p_2 = model.predictor(z_1), model.predictor(z_2)
    want = nnclr_loss(p_1, p_2, nearest_neighbours(z_1, support), nearest_neighbours(z_2, support), 0.1)
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-5)
    torch.testing.assert_close(model.queue[:4], F.normalize(z_1, dim=1).detach())  # view 1 enqueued after the lookup
    torch.testing.assert_close(model.queue[4:], support[4:])
    assert int(model.queue_ptr) == 4
    assert {"queue", "queue_ptr"} <= set(model.state_dict())


def test_exact_resume_with_the_support_set(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def build():
        torch.manual_seed(0)
        return NNCLR(cnn(), proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16, queue_size=20)

    straight = build()
    ckpt = ModelCheckpoint(
        dirpath=tmp_path, filename="step{step}", every_n_train_steps=6, save_top_k=-1, auto_insert_metric_name=False
    )
    trainer(tmp_path, max_epochs=2, enable_checkpointing=True, callbacks=[ckpt]).fit(straight, datamodule=tiny_data())
    resumed = build()
    t2 = trainer(tmp_path, max_epochs=2)
    t2.fit(resumed, datamodule=tiny_data(), ckpt_path=tmp_path / "step6.ckpt", weights_only=True)
    assert t2.global_step == 8
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:  # networks, support set, its pointer
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=lambda m, k=k: f"{k} differs after resume: {m}")
