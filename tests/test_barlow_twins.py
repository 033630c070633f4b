"""Barlow Twins: the loss against a hand-computed value and the reference implementation's formula, the default
lambda, and the method on tiny data (DDP equivalence: tests/test_ddp_equivalence.py)."""

import pytest
import torch
from torch import nn

from lightning_ssl.losses import barlow_twins_loss
from lightning_ssl.losses.barlow_twins import default_lambda
from lightning_ssl.methods import BarlowTwins
from lightning_ssl.modules.backbones import SmallCNN


def reference_loss(z1, z2, lambd):
    """facebookresearch/barlowtwins main.py: BatchNorm1d(affine=False) in training mode, c = bn(z1).T @ bn(z2) / N,
    on_diag = sum (c_ii - 1)^2, off_diag = sum of the off-diagonal c_ij^2, in float64."""
    bn = nn.BatchNorm1d(z1.shape[1], affine=False).double().train()
    c = bn(z1.double()).T @ bn(z2.double()) / len(z1)
    n = c.shape[0]
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten().pow(2).sum()
    return on_diag + lambd * off_diag


def test_hand_computed():
    # two samples: every standardized column is (-1, 1) or (1, -1), scaled by 1 / sqrt(1 + eps) (variance 1)
    z_a = torch.tensor([[1.0, 0.0], [3.0, 2.0]])  # columns -> (-1, 1), (-1, 1)
    z_b = torch.tensor([[0.0, 5.0], [2.0, 3.0]])  # columns -> (-1, 1), (1, -1)
    c = 1 / (1 + 1e-5)  # C = [[c, -c], [c, -c]]
    expected = (1 - c) ** 2 + (1 + c) ** 2 + 0.5 * (c**2 + c**2)
    assert barlow_twins_loss(z_a, z_b, lambda_offdiag=0.5).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("dim", "lambd"), [(16, None), (16, 0.02), (64, 5e-3)])
def test_matches_reference(dim, lambd):
    torch.manual_seed(0)
    z1, z2 = torch.randn(32, dim), torch.randn(32, dim) * 3 + 1
    z2 = z2 + z1  # correlated views
    want = reference_loss(z1, z2, default_lambda(dim) if lambd is None else lambd)
    assert barlow_twins_loss(z1, z2, lambd).item() == pytest.approx(want.item(), rel=1e-5)


def test_default_lambda_is_the_papers_at_8192_and_scales_with_1_over_d():
    assert default_lambda(8192) == pytest.approx(5e-3)
    assert default_lambda(128) == pytest.approx(5e-3 * 64)
    model = BarlowTwins(SmallCNN(1, 16, width=4), proj_hidden_dim=16, proj_dim=32)
    z = torch.randn(8, 32)
    assert model.criterion(z, z + 0.1).item() == pytest.approx(barlow_twins_loss(z, z + 0.1, 5e-3 * 256).item())


def test_identity_correlation_gives_zero_and_the_loss_can_decrease():
    a = torch.randn(64, 8)
    z = torch.linalg.qr(a - a.mean(0))[0]  # orthonormal columns orthogonal to the ones vector (zero mean): C = I
    assert barlow_twins_loss(z, z, 1.0).item() < 1e-5
    torch.manual_seed(0)
    za, zb = torch.randn(64, 8, requires_grad=True), torch.randn(64, 8, requires_grad=True)
    opt = torch.optim.SGD([za, zb], lr=0.5)
    first = None
    for _ in range(50):
        loss = barlow_twins_loss(za, zb, 0.1)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first


def test_bad_shapes_and_lambda():
    with pytest.raises(ValueError, match="same shape"):
        barlow_twins_loss(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="lambda_offdiag must be > 0"):
        barlow_twins_loss(torch.randn(4, 3), torch.randn(4, 3), lambda_offdiag=-1.0)


def test_step_uses_separate_forwards_and_embed_is_the_backbone():
    torch.manual_seed(0)
    model = BarlowTwins(SmallCNN(1, 16, width=4), proj_hidden_dim=32, proj_dim=32)
    x_a, x_b = torch.randn(8, 1, 16, 16), torch.randn(8, 1, 16, 16)
    out = model.training_step(([x_a, x_b], torch.zeros(8)), 0)
    torch.manual_seed(0)
    same = BarlowTwins(SmallCNN(1, 16, width=4), proj_hidden_dim=32, proj_dim=32)
    want = barlow_twins_loss(same.projector(same.backbone(x_a)), same.projector(same.backbone(x_b)), 5e-3 * 256)
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-5)
    assert model.embed(x_a).shape == out["features"].shape == (8, model.backbone.num_features)


def test_loss_scale_multiplies_the_loss_as_solo_learn():
    """vturrisi/solo-learn solo/losses/barlow.py: scale_loss * (on_diag + lamb * off_diag)."""
    torch.manual_seed(0)
    views = [torch.randn(8, 1, 12, 12), torch.randn(8, 1, 12, 12)]
    plain = BarlowTwins(SmallCNN(1, 12, width=4, stages=1), 16, 16, lambda_offdiag=0.0051)
    scaled = BarlowTwins(SmallCNN(1, 12, width=4, stages=1), 16, 16, lambda_offdiag=0.0051, loss_scale=0.1)
    scaled.load_state_dict(plain.state_dict())
    plain.log = scaled.log = lambda *a, **k: None
    a = plain.training_step((views, None), 0)["loss"]
    b = scaled.training_step((views, None), 0)["loss"]
    torch.testing.assert_close(b, 0.1 * a)
    with pytest.raises(ValueError, match="loss_scale"):
        BarlowTwins(SmallCNN(1, 12, width=4, stages=1), 16, 16, loss_scale=0.0)
