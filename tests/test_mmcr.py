"""MMCR: the loss against a direct transcription of the paper's code (ThomasYerxa/mmcr) and hand-computed values,
its invariances, that it can decrease, the method's step and bad settings (DDP: tests/test_ddp_equivalence.py,
cases mmcr*: the centroid matrix of the global batch)."""

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_ssl.data import SimCLRViews
from lightning_ssl.losses.mmcr import MMCRLoss, mmcr_loss, mmcr_terms
from lightning_ssl.methods import MMCR
from lightning_ssl.modules.backbones import SmallCNN
from tests.test_momentum_methods import tiny_data, trainer


def reference_loss(z, lmbda, n_aug):
    """MMCR_Loss.forward of ThomasYerxa/mmcr, mmcr/cifar_stl/loss_mmcr.py (distributed=False), in float64, with
    einops' "(B N) C -> B C N" written as a reshape; ``z`` holds image b's n_aug views in rows b*n_aug ... ."""
    z = F.normalize(z.double(), dim=-1)
    z_local = z.reshape(-1, n_aug, z.shape[-1]).permute(0, 2, 1)  # (B, C, N)
    centroids = torch.mean(z_local, dim=-1)
    local_nuc = torch.linalg.svdvals(z_local).sum() if lmbda != 0.0 else torch.tensor(0.0)
    global_nuc = torch.linalg.svdvals(centroids).sum()
    batch_size = z_local.shape[0]
    return lmbda * local_nuc / batch_size - global_nuc


@pytest.mark.parametrize("lmbda", [0.0, 0.1])
def test_matches_reference(lmbda):
    torch.manual_seed(0)
    v, n, d = 5, 12, 16
    z = torch.randn(v, n, d) + 0.3 * torch.randn(1, n, d)  # (V, N, D): views of an image correlate
    image_major = z.transpose(0, 1).reshape(n * v, d)  # the reference's (B N) C layout
    got = mmcr_loss(z, lmbda, gather_distributed=False)
    assert got.item() == pytest.approx(reference_loss(image_major, lmbda, v).item(), rel=1e-5)


def test_hand_computed_optimum_and_collapse():
    n, v, d = 4, 3, 8
    basis = torch.eye(d)[:n]  # orthonormal images, every view identical: centroids orthonormal, ||C||_* = N
    z = basis.expand(v, n, d) * 2.5  # lengths do not matter (normalized)
    assert mmcr_loss(z, gather_distributed=False).item() == pytest.approx(-n, abs=1e-5)
    # the local term of identical views: each (V, D) matrix has rank 1 and singular value sqrt(V)
    assert mmcr_loss(z, 0.5, gather_distributed=False).item() == pytest.approx(0.5 * math.sqrt(v) - n, abs=1e-5)
    collapsed = torch.ones(v, n, d)  # every centroid the same unit vector: rank 1, singular value sqrt(N)
    assert mmcr_loss(collapsed, gather_distributed=False).item() == pytest.approx(-math.sqrt(n), abs=1e-5)


def test_invariances():
    torch.manual_seed(0)
    z = torch.randn(4, 10, 6)
    base = mmcr_loss(z, 0.2, gather_distributed=False)
    q, _ = torch.linalg.qr(torch.randn(6, 6))  # a rotation of the embedding space
    for other in (z[torch.randperm(4)], z @ q, 3.0 * z, z[:, torch.randperm(10)]):
        torch.testing.assert_close(mmcr_loss(other, 0.2, gather_distributed=False), base, rtol=1e-5, atol=1e-5)


def test_can_decrease_to_its_bound():
    torch.manual_seed(0)
    z = torch.randn(4, 8, 16).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.05)
    start = mmcr_loss(z.detach(), gather_distributed=False).item()
    for _ in range(150):
        opt.zero_grad()
        mmcr_loss(z, gather_distributed=False).backward()
        opt.step()
    end = mmcr_loss(z.detach(), gather_distributed=False).item()
    assert end < start
    assert end == pytest.approx(-8, abs=0.2)  # N = 8 <= D: views agree, centroids orthonormal
    global_nuc, _ = mmcr_terms(z.detach(), local=False, gather_distributed=False)
    assert global_nuc.item() <= 8 + 1e-4


def small_mmcr(**kw):
    return MMCR(SmallCNN(1, 16, width=4), proj_hidden_dim=16, proj_dim=8, **kw)


def test_step_is_the_loss_of_its_views_and_features_are_embed():
    torch.manual_seed(0)
    model = small_mmcr(lambda_local=0.1).eval()
    views = [torch.randn(4, 1, 16, 16) for _ in range(3)] + [torch.randn(4, 1, 8, 8)]
    out = model.training_step((views, torch.zeros(4)), 0)
    z = torch.stack([model.projector(model.backbone(v)) for v in views])
    assert out["loss"].item() == pytest.approx(mmcr_loss(z, 0.1, gather_distributed=False).item(), rel=1e-5)
    torch.testing.assert_close(out["features"], model.embed(views[0]))


def test_bad_settings():
    with pytest.raises(ValueError, match=r"lambda_local .* must be >= 0"):
        small_mmcr(lambda_local=-0.1)
    with pytest.raises(ValueError, match="lambda_local"):
        MMCRLoss(lambda_local=-1.0)
    with pytest.raises(ValueError, match="at least 2 views"):
        small_mmcr().training_step(([torch.randn(4, 1, 16, 16)], torch.zeros(4)), 0)
    with pytest.raises(ValueError, match=r"\(V views, N images, D\)"):
        mmcr_loss(torch.randn(8, 4))


def test_trains_on_multi_view_batches(tmp_path):
    model = small_mmcr()
    t = trainer(tmp_path, max_steps=3)
    t.fit(model, datamodule=tiny_data(views=SimCLRViews(num_views=4, min_scale=0.5, blur_prob=0.0)))
    assert torch.isfinite(t.callback_metrics["train/loss"])
    assert t.callback_metrics["train/centroid_nuclear_norm"] > 0
