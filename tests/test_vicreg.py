"""VICReg: the loss against a hand-computed value and the reference implementation's formula, the terms' roles,
and the method's step (DDP equivalence with gathered embeddings: tests/test_ddp_equivalence.py)."""

import pytest
import torch
import torch.nn.functional as F

from lightning_ssl.losses import vicreg_loss
from lightning_ssl.losses.vicreg import vicreg_terms
from lightning_ssl.methods import VICReg
from lightning_ssl.modules.backbones import SmallCNN


def reference_loss(x, y, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0):
    """VICReg.forward of facebookresearch/vicreg (main_vicreg.py) on one process, in float64."""
    x, y = x.double(), y.double()
    batch_size, num_features = x.shape
    repr_loss = F.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    cov_x = (x.T @ x) / (batch_size - 1)
    cov_y = (y.T @ y) / (batch_size - 1)

    def off_diagonal(m):
        n = m.shape[0]
        return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()

    cov_loss = off_diagonal(cov_x).pow(2).sum() / num_features + off_diagonal(cov_y).pow(2).sum() / num_features
    return sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss


def test_hand_computed():
    z_a = torch.tensor([[0.0, 0.0], [2.0, 2.0]])  # both dims var 2 (std > 1: no hinge), Cov = [[2, 2], [2, 2]]
    z_b = torch.tensor([[0.0, 1.0], [2.0, 1.0]])  # dim 1 constant: hinge 1 - sqrt(1e-4) = 0.99; Cov off-diagonal 0
    s, v, c = vicreg_terms(z_a, z_b)
    assert s.item() == pytest.approx(0.5)  # differences (0, -1), (0, 1)
    assert v.item() == pytest.approx((0.0 + 0.99 / 2) / 2)
    assert c.item() == pytest.approx((2**2 + 2**2) / 2)
    assert vicreg_loss(z_a, z_b).item() == pytest.approx(25 * 0.5 + 25 * 0.2475 + 4.0, rel=1e-6)


@pytest.mark.parametrize("weights", [(25.0, 25.0, 1.0), (1.0, 10.0, 0.5)])
def test_matches_reference(weights):
    torch.manual_seed(0)
    x = torch.randn(32, 16) * 0.5
    y = x + 0.3 * torch.randn(32, 16)
    y[:, 3] = 2 * y[:, 2]  # some correlated dimensions
    assert vicreg_loss(x, y, *weights).item() == pytest.approx(reference_loss(x, y, *weights).item(), rel=1e-5)


def test_variance_term_prevents_collapse_and_invariance_pulls_views_together():
    z = torch.randn(16, 8)
    collapsed = torch.zeros(16, 8)
    assert vicreg_terms(collapsed, collapsed)[1].item() == pytest.approx(1 - 1e-2)  # std = sqrt(eps)
    assert vicreg_terms(z * 3, z * 3)[1].item() < vicreg_terms(z * 0.1, z * 0.1)[1].item()
    s_close, s_far = vicreg_terms(z, z + 0.01)[0], vicreg_terms(z, torch.randn(16, 8))[0]
    assert s_close < s_far


def test_step_and_logged_terms():
    torch.manual_seed(0)
    model = VICReg(SmallCNN(1, 16, width=4), proj_hidden_dim=32, proj_dim=16, sim_weight=2.0)
    x_a, x_b = torch.randn(8, 1, 16, 16), torch.randn(8, 1, 16, 16)
    out = model.training_step(([x_a, x_b], torch.zeros(8)), 0)
    z_a, z_b = model.projector(model.backbone(x_a)), model.projector(model.backbone(x_b))
    assert out["loss"].item() == pytest.approx(vicreg_loss(z_a, z_b, 2.0, 25.0, 1.0).item(), rel=1e-5)
    assert out["features"].shape == model.embed(x_a).shape == (8, model.backbone.num_features)


def test_bad_settings():
    with pytest.raises(ValueError, match="var_weight must be >= 0"):
        vicreg_loss(torch.randn(4, 3), torch.randn(4, 3), var_weight=-1)
    with pytest.raises(ValueError, match="gamma and eps must be > 0"):
        vicreg_loss(torch.randn(4, 3), torch.randn(4, 3), eps=0.0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        vicreg_loss(torch.randn(1, 3), torch.randn(1, 3))
