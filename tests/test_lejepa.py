"""LeJEPA and SIGReg: the loss against direct transcriptions of the reference code (rbalestr-lab/lejepa) and a
hand-computed value, the properties the method relies on, the two mistakes peers shipped, the method's step, bad
settings, and exact resume of SIGReg's slice sequence (DDP: tests/test_ddp_equivalence.py, cases lejepa*)."""

import math

import pytest
import torch

from lightning_ssl.data import MultiCropViews
from lightning_ssl.losses.lejepa import lejepa_loss, lejepa_prediction_loss
from lightning_ssl.losses.sigreg import SIGReg, epps_pulley, random_directions, sigreg_loss
from lightning_ssl.methods import LeJEPA
from lightning_ssl.modules.backbones import SmallCNN
from tests.test_momentum_methods import tiny_data, trainer


# --- direct transcriptions of the reference code, in float64 ----------------------------------------------------------
def reference_epps_pulley(x, t_max=3, n_points=17):
    """EppsPulley.__init__ + forward of rbalestr-lab/lejepa, lejepa/univariate/epps_pulley.py (one process)."""
    t = torch.linspace(0, t_max, n_points, dtype=torch.float64)
    dt = t_max / (n_points - 1)
    weights = torch.full((n_points,), 2 * dt, dtype=torch.float64)
    weights[[0, -1]] = dt
    phi = t.square().mul_(0.5).neg_().exp_()
    weights = weights * phi
    N = x.size(-2)
    x_t = x.unsqueeze(-1) * t
    cos_mean = torch.cos(x_t).mean(-3)
    sin_mean = torch.sin(x_t).mean(-3)
    err = (cos_mean - phi).square() + sin_mean.square()
    return (err @ weights) * N


def reference_directions(dim, num_slices, seed):
    """The slice draw of SlicingUnivariateTest.forward, rbalestr-lab/lejepa, lejepa/multivariate/slicing.py."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn((dim, num_slices), generator=g)
    A /= A.norm(p=2, dim=0)
    return A


def reference_minimal_loss(proj, A, lamb):
    """The training step of rbalestr-lab/lejepa MINIMAL.md (all views global): SIGReg.forward with fixed slices
    ``A`` and ``lejepa_loss = sigreg_loss * lamb + inv_loss * (1 - lamb)``; ``proj`` is (V, N, K)."""
    inv_loss = (proj.mean(0) - proj).square().mean()
    sigreg = reference_epps_pulley(proj @ A).mean()  # (V, num_slices) statistics, averaged
    return sigreg * lamb + inv_loss * (1 - lamb)


def reference_paper_loss(global_emb, all_emb, A, lambd):
    """Algorithm 1 of the paper (arXiv:2511.08544, p. 11), one process: the global views' mean is the target of
    every view; SIGReg per view of all views, averaged."""
    centers = global_emb.mean(0)
    sim = (centers - all_emb).square().mean()
    sigreg = torch.stack([reference_epps_pulley(emb @ A).mean() for emb in all_emb]).mean()
    return (1 - lambd) * sim + lambd * sigreg


def test_directions_match_the_reference_draw():
    ours = random_directions(12, 7, torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours, reference_directions(12, 7, 3))
    torch.testing.assert_close(ours.norm(dim=0), torch.ones(7))


@pytest.mark.parametrize("lamb", [0.02, 0.5])
def test_matches_reference_minimal_example(lamb):
    torch.manual_seed(0)
    proj = torch.randn(4, 32, 16) * 0.7 + 0.2  # 4 global views, 32 images, K = 16
    A = reference_directions(16, 64, seed=5)
    got = lejepa_loss(proj, num_global=4, directions=A, lambda_sigreg=lamb, gather_distributed=False)
    want = reference_minimal_loss(proj.double(), A.double(), lamb)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_matches_the_papers_algorithm_with_local_views():
    torch.manual_seed(1)
    z = torch.randn(6, 16, 8)  # 2 global + 4 local views
    A = reference_directions(8, 32, seed=2)
    got = lejepa_loss(z, num_global=2, directions=A, lambda_sigreg=0.3, gather_distributed=False)
    want = reference_paper_loss(z[:2].double(), z.double(), A.double(), 0.3)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_epps_pulley_of_a_point_mass_hand_computed():
    """All samples at 0: ecf = 1, so EP / N = int (1 - e^{-t^2/2})^2 e^{-t^2/2} dt over R
    = sqrt(2 pi) - 2 sqrt(pi) + sqrt(2 pi / 3) (Gaussian integrals); a fine grid on [-10, 10] reaches it."""
    exact = math.sqrt(2 * math.pi) - 2 * math.sqrt(math.pi) + math.sqrt(2 * math.pi / 3)
    stat = epps_pulley(torch.zeros(5, 1), t_max=10.0, knots=2001, gather_distributed=False)
    assert stat.item() / 5 == pytest.approx(exact, rel=1e-4)


# --- properties ---------------------------------------------------------------------------------------------------
def test_gaussian_embeddings_score_low_and_collapse_high():
    torch.manual_seed(0)
    A = random_directions(16, 128, torch.Generator().manual_seed(0))
    gaussian = sigreg_loss(torch.randn(512, 16), A, gather_distributed=False)
    collapsed = sigreg_loss(
        torch.randn(1, 16).expand(512, 16) + 0.01 * torch.randn(512, 16), A, gather_distributed=False
    )
    too_wide = sigreg_loss(3 * torch.randn(512, 16), A, gather_distributed=False)
    # EP of a true N(0, 1) sample stays O(1) as N grows; of any other distribution it grows like N (here 512)
    assert gaussian.item() < 2.0
    assert too_wide.item() > 50
    assert collapsed.item() > 50


def test_invariant_to_sample_order_and_sign():
    torch.manual_seed(0)
    z, A = torch.randn(3, 20, 8) + 0.5, random_directions(8, 16, torch.Generator().manual_seed(1))
    base = sigreg_loss(z, A, gather_distributed=False)
    perm = torch.randperm(20)
    torch.testing.assert_close(sigreg_loss(z[:, perm], A, gather_distributed=False), base)
    torch.testing.assert_close(sigreg_loss(-z, A, gather_distributed=False), base)  # |ecf| is even in x


def test_can_decrease_towards_an_isotropic_gaussian():
    torch.manual_seed(0)
    z = (torch.rand(128, 8) * 4).requires_grad_(True)  # uniform on [0, 4]: mean 2, far from N(0, I)
    opt = torch.optim.Adam([z], lr=0.05)
    sig = SIGReg(num_slices=32, gather_distributed=False)
    start = sig(z.detach()).item()
    for _ in range(100):
        opt.zero_grad()
        sig(z).backward()
        opt.step()
    assert sig(z.detach()).item() < start / 10
    assert z.mean().abs().item() < 1.0  # moving to the centre of N(0, I)


def test_per_view_and_flattened_modes():
    torch.manual_seed(0)
    z, A = torch.randn(3, 10, 4), random_directions(4, 8)
    per_view = sigreg_loss(z, A, per_view=True, gather_distributed=False)
    views = torch.stack([sigreg_loss(v, A, gather_distributed=False) for v in z]).mean()
    torch.testing.assert_close(per_view, views)  # every view counts, global ones included
    flat = sigreg_loss(z, A, per_view=False, gather_distributed=False)
    torch.testing.assert_close(flat, sigreg_loss(z.reshape(30, 4), A, gather_distributed=False))
    assert not torch.isclose(flat, per_view)


def test_peer_mistakes_are_excluded():
    """The weighting is (1 - lambda) * prediction + lambda * SIGReg, and the global views are predicted too."""
    torch.manual_seed(0)
    z, A = torch.randn(4, 8, 6), random_directions(6, 16)
    pred = lejepa_prediction_loss(z, 2)
    sig = sigreg_loss(z, A, gather_distributed=False)
    for lam in (0.0, 0.25, 1.0):
        got = lejepa_loss(z, 2, A, lam, gather_distributed=False)
        torch.testing.assert_close(got, (1 - lam) * pred + lam * sig)
    two_globals = torch.stack([torch.ones(8, 6), -torch.ones(8, 6)])  # mean 0
    locals_at_target = torch.zeros(2, 8, 6)
    assert lejepa_prediction_loss(torch.cat([two_globals, locals_at_target]), 2).item() == pytest.approx(0.5)


# --- SIGReg's slices ------------------------------------------------------------------------------------------------
def test_slices_are_fresh_each_call_and_reproducible():
    a, b = SIGReg(num_slices=4, seed=3), SIGReg(num_slices=4, seed=3)
    first = a.directions(5)
    a(torch.randn(8, 5))
    assert not torch.allclose(a.directions(5), first)
    assert int(a.calls) == 1
    assert "calls" in a.state_dict()
    torch.testing.assert_close(b.directions(5), first)  # same seed, same call count: same slices
    assert not torch.allclose(SIGReg(num_slices=4, seed=4).directions(5), first)


# --- the method -------------------------------------------------------------------------------------------------------
def small_lejepa(**kw):
    return LeJEPA(SmallCNN(1, 16, width=4), proj_hidden_dim=16, proj_dim=8, **kw)


def test_step_is_the_loss_of_its_views_and_features_are_embed():
    torch.manual_seed(0)
    model = small_lejepa(lambda_sigreg=0.3, num_slices=16).eval()
    views = [torch.randn(4, 1, 8, 8), torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16)]  # local first
    directions = model.sigreg.directions(8)
    out = model.training_step((views, torch.zeros(4)), 0)
    z = torch.stack([model.projector(model.backbone(v)) for v in (views[1], views[2], views[0])])
    want = lejepa_loss(z, 2, directions, 0.3, gather_distributed=False)
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-5)
    torch.testing.assert_close(out["features"], model.embed(views[0]))


def test_bad_settings():
    with pytest.raises(ValueError, match=r"lambda_sigreg must lie in \[0, 1\]"):
        small_lejepa(lambda_sigreg=1.5)
    with pytest.raises(ValueError, match=r"lambda_sigreg must lie in \[0, 1\]"):
        small_lejepa(lambda_sigreg=-0.1)
    with pytest.raises(ValueError, match="num_slices"):
        small_lejepa(num_slices=0)
    with pytest.raises(ValueError, match="knots"):
        SIGReg(knots=1)
    with pytest.raises(ValueError, match="t_max"):
        epps_pulley(torch.randn(4, 2), t_max=0.0)
    with pytest.raises(ValueError, match="at least 2 views"):
        small_lejepa().training_step(([torch.randn(4, 1, 16, 16)], torch.zeros(4)), 0)
    with pytest.raises(ValueError, match=r"\(V, N, D\) and directions \(D, M\)"):
        sigreg_loss(torch.randn(2, 4, 3), torch.randn(5, 2))


def test_exact_resume(tmp_path):
    """8 optimizer steps straight == resuming at step 4 and training to 8: the weights and SIGReg's call counter
    (hence the slices of every later step) are restored."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    views = MultiCropViews(global_crops=2, local_crops=2, local_size=8, global_blur=(0.0, 0.0), local_blur=0.0)

    def build():
        torch.manual_seed(0)
        return small_lejepa(lambda_sigreg=0.5, num_slices=16)

    straight = build()
    ckpt = ModelCheckpoint(
        dirpath=tmp_path, filename="step{step}", every_n_train_steps=4, save_top_k=-1, auto_insert_metric_name=False
    )
    trainer(tmp_path, max_epochs=2, enable_checkpointing=True, callbacks=[ckpt]).fit(
        straight, datamodule=tiny_data(views=views)
    )
    resumed = build()
    t2 = trainer(tmp_path, max_epochs=2)
    t2.fit(resumed, datamodule=tiny_data(views=views), ckpt_path=tmp_path / "step4.ckpt", weights_only=True)
    assert t2.global_step == 8
    assert int(resumed.sigreg.calls) == 8
    a, b = straight.state_dict(), resumed.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=lambda m, k=k: f"{k} differs after resume: {m}")
