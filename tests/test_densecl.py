"""DenseCL: the loss against a direct transcription of the reference code (WXinlong/DenseCL), the dense
correspondence on a hand-built case, the loss's properties, the method (teachers, two queues, feature maps, bad
settings) and exact resume of its teachers and queues (DDP: tests/test_ddp_equivalence.py, case densecl)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_ssl.losses.densecl import dense_correspondence, densecl_loss, densecl_terms
from lightning_ssl.methods import DenseCL
from lightning_ssl.modules.backbones import feature_map
from lightning_ssl.modules.sync_bn import shuffled_forward
from tests.test_momentum_methods import tiny_backbone, tiny_data, trainer


def reference_loss(q, k, q_grid, k_grid, q_b, k_b, queue, queue2, temperature=0.2, loss_lambda=0.5):
    """DenseCL.forward_train of WXinlong/DenseCL, openselfsup/models/densecl.py (from the normalizations to the
    losses, one process, no shuffle) with ContrastiveHead of openselfsup/models/heads/contrastive_head.py, in
    float64. Shapes as there: q, k (N, C); q_grid, k_grid (N, C, S^2); q_b, k_b (N, C_b, S^2); queues (C, K)."""
    q, k, q_grid, k_grid, q_b, k_b, queue, queue2 = (
        t.double() for t in (q, k, q_grid, k_grid, q_b, k_b, queue, queue2)
    )

    def head(pos, neg):
        logits = torch.cat((pos, neg), dim=1) / temperature
        return nn.CrossEntropyLoss()(logits, torch.zeros(pos.size(0), dtype=torch.long))

    q, q_grid, q_b = (nn.functional.normalize(t, dim=1) for t in (q, q_grid, q_b))
    k, k_grid, k_b = (nn.functional.normalize(t, dim=1) for t in (k, k_grid, k_b))
    l_pos = torch.einsum("nc,nc->n", [q, k]).unsqueeze(-1)
    l_neg = torch.einsum("nc,ck->nk", [q, queue.clone().detach()])
    backbone_sim_matrix = torch.matmul(q_b.permute(0, 2, 1), k_b)
    densecl_sim_ind = backbone_sim_matrix.max(dim=2)[1]
    indexed_k_grid = torch.gather(k_grid, 2, densecl_sim_ind.unsqueeze(1).expand(-1, k_grid.size(1), -1))
    densecl_sim_q = (q_grid * indexed_k_grid).sum(1)
    l_pos_dense = densecl_sim_q.view(-1).unsqueeze(-1)
    q_grid = q_grid.permute(0, 2, 1)
    q_grid = q_grid.reshape(-1, q_grid.size(2))
    l_neg_dense = torch.einsum("nc,ck->nk", [q_grid, queue2.clone().detach()])
    return head(l_pos, l_neg) * (1 - loss_lambda) + head(l_pos_dense, l_neg_dense) * loss_lambda


def _inputs(b=3, p=8, c=5, s=9, k=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    return dict(
        q=r(b, p),
        k=r(b, p),
        q_dense=r(b, p, s),
        k_dense=r(b, p, s),
        f_q=r(b, c, s),
        f_k=r(b, c, s),
        queue=F.normalize(r(k, p), dim=1),
        dense_queue=F.normalize(r(k, p), dim=1),
    )


@pytest.mark.parametrize(("temperature", "lam"), [(0.2, 0.5), (0.07, 0.3)])
def test_matches_reference(temperature, lam):
    x = _inputs()
    got = densecl_loss(**x, temperature=temperature, dense_weight=lam)
    want = reference_loss(
        x["q"],
        x["k"],
        x["q_dense"],
        x["k_dense"],
        x["f_q"],
        x["f_k"],
        x["queue"].T,
        x["dense_queue"].T,
        temperature,
        lam,
    )
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_correspondence_recovers_a_permutation_of_cells():
    torch.manual_seed(0)
    f_q = torch.randn(2, 16, 3, 3)  # (B, C, h, w)
    perm = torch.randperm(9)
    f_k = 2.0 * f_q.flatten(2)[:, :, perm]  # the key's cells: the query's, shuffled (and scaled: cosine)
    match = dense_correspondence(f_q, f_k)
    assert torch.equal(match, torch.argsort(perm).expand(2, 9))


def test_properties():
    x = _inputs(seed=1)
    base = densecl_loss(**x)
    perm = torch.randperm(9)  # the same shuffle of the key's cells in its feature map and its dense projections
    shuffled = dict(x, k_dense=x["k_dense"][:, :, perm], f_k=x["f_k"][:, :, perm])
    torch.testing.assert_close(densecl_loss(**shuffled), base)
    aligned = dict(x, q=x["k"].clone(), q_dense=x["k_dense"][:, :, dense_correspondence(x["f_q"], x["f_k"])[0]])
    glob, dense = densecl_terms(**aligned)
    glob0, dense0 = densecl_terms(**x)
    assert glob < glob0  # queries on their positive keys: lower loss
    assert dense < dense0
    g_only, d_only = densecl_loss(**x, dense_weight=0.0), densecl_loss(**x, dense_weight=1.0)
    torch.testing.assert_close(g_only, glob0)
    torch.testing.assert_close(d_only, dense0)


def test_loss_can_decrease():
    x = _inputs(seed=2)
    q_dense = x.pop("q_dense").requires_grad_(True)
    opt = torch.optim.SGD([q_dense], lr=1.0)
    start = densecl_loss(q_dense=q_dense, **x).item()
    for _ in range(30):
        opt.zero_grad()
        densecl_loss(q_dense=q_dense, **x).backward()
        opt.step()
    assert densecl_loss(q_dense=q_dense.detach(), **x).item() < start - 0.5


# --- the method ---------------------------------------------------------------------------------------------------
def small_densecl(**kw):
    return DenseCL(tiny_backbone(), proj_hidden_dim=16, proj_dim=8, **{"queue_size": 32, **kw})


def test_step_teachers_queues_and_features():
    torch.manual_seed(0)
    model = small_densecl()
    assert [n for n, _ in model.named_children() if n.startswith("teacher_")] == [
        "teacher_backbone",
        "teacher_projector",
        "teacher_dense_projector",
    ]
    x_q, x_k = torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16)
    queue, dense_queue = model.queue.clone(), model.dense_queue.clone()
    model.eval()  # BatchNorm on running statistics, so the keys can be recomputed below
    out = model.training_step(([x_q, x_k], torch.zeros(4)), 0)
    out["loss"].backward()
    assert all(p.grad is None for _, t in model.momentum_pairs() for p in t.parameters())
    assert all(p.grad is not None for p in model.dense_projector.parameters())
    assert int(model.queue_ptr) == 4
    assert int(model.dense_queue_ptr) == 4
    with torch.no_grad():  # the keys enqueued: the teacher's global and pooled dense projections, normalized
        f_k, h_k = feature_map(model.teacher_backbone, x_k)
        k = F.normalize(model.teacher_projector(h_k), dim=1)
        k_dense = F.normalize(model.teacher_dense_projector(f_k).flatten(2).mean(2), dim=1)
    torch.testing.assert_close(model.queue[:4], k, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.dense_queue[:4], k_dense, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.queue[4:], queue[4:])
    torch.testing.assert_close(model.dense_queue[4:], dense_queue[4:])
    torch.testing.assert_close(out["features"], model.backbone(x_q).detach())


def test_bad_settings(tmp_path):
    with pytest.raises(ValueError, match=r"dense_weight must lie in \[0, 1\]"):
        small_densecl(dense_weight=1.5)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        small_densecl(temperature=0.0)
    with pytest.raises(ValueError, match="queue_size must be >= 1"):
        small_densecl(queue_size=0)
    with pytest.raises(ValueError, match="split_bn must be >= 1"):
        small_densecl(split_bn=0)
    flat = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 8))  # (B, D) only: no map
    with pytest.raises(TypeError, match="DenseCL needs a backbone with a spatial feature map: Sequential"):
        DenseCL(flat, proj_hidden_dim=16, proj_dim=8)
    with pytest.raises(ValueError, match="queue_size=4 is smaller than the global batch"):
        trainer(tmp_path, max_steps=1).fit(small_densecl(queue_size=4), datamodule=tiny_data())


def test_shuffled_keys_equal_plain_keys_in_eval_mode():
    torch.manual_seed(0)
    model = small_densecl(split_bn=4).eval()
    x = torch.randn(8, 1, 16, 16)
    shuffled = shuffled_forward(model._teacher, x, split_groups=4)
    for a, b in zip(shuffled, model._teacher(x), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_resnet_feature_map_and_training(tmp_path):
    from lightning_ssl.modules.backbones import ResNet

    model = DenseCL(ResNet("resnet18", in_channels=1, image_size=16), proj_hidden_dim=16, proj_dim=8, queue_size=32)
    assert model.dense_projector.in_dim == 512  # layer4's channels
    t = trainer(tmp_path, max_steps=2)
    t.fit(model, datamodule=tiny_data())
    assert torch.isfinite(t.callback_metrics["train/dense_loss"])


@pytest.mark.parametrize("stop_at", [4, 6], ids=["epoch-end", "mid-epoch"])
def test_exact_resume(stop_at, tmp_path):
    """12 optimizer steps straight == resuming at step N and training to 12: student, teachers (with their BatchNorm
    statistics), both queues and pointers, the momentum schedule (4 batches per epoch)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def build():
        torch.manual_seed(0)
        return small_densecl(queue_size=20, momentum=0.99, momentum_end=0.999, split_bn=2)

    straight = build()
    ckpt = ModelCheckpoint(
        dirpath=tmp_path,
        filename="step{step}",
        every_n_train_steps=stop_at,
        save_top_k=-1,
        auto_insert_metric_name=False,
    )
    trainer(tmp_path, max_epochs=3, enable_checkpointing=True, callbacks=[ckpt]).fit(straight, datamodule=tiny_data())
    resumed = build()
    t2 = trainer(tmp_path, max_epochs=3)
    t2.fit(resumed, datamodule=tiny_data(), ckpt_path=tmp_path / f"step{stop_at}.ckpt", weights_only=True)
    assert t2.global_step == 12
    a, b = straight.state_dict(), resumed.state_dict()
    assert {"queue", "queue_ptr", "dense_queue", "dense_queue_ptr"} <= a.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=lambda m, k=k: f"{k} differs after resume: {m}")
