"""SimCLR's step: two views, and multi-crop (2 global + V local views) as in SwAV's multi-crop SimCLR."""

from __future__ import annotations

import pytest
import torch

from lightning_ssl.data import MultiCropViews, SimCLRViews
from lightning_ssl.losses.info_nce import nt_xent_loss
from lightning_ssl.methods import SimCLR
from lightning_ssl.modules.backbones import SmallCNN


def model() -> SimCLR:
    torch.manual_seed(0)
    return SimCLR(SmallCNN(1, 16, width=4, stages=2), proj_hidden_dim=16, proj_dim=8, temperature=0.5)


def test_two_views_is_nt_xent_of_the_pair():
    m = model()
    x1, x2 = torch.randn(6, 1, 16, 16), torch.randn(6, 1, 16, 16)
    out = m.training_step(([x1, x2], torch.zeros(6)), 0)
    z1, z2 = m.projector(m.backbone(torch.cat([x1, x2]))).chunk(2)
    assert out["loss"].item() == pytest.approx(nt_xent_loss(z1, z2, 0.5).item(), rel=1e-5)


def test_multicrop_averages_nt_xent_over_pairs_with_a_global_view():
    m = model()
    g = [torch.randn(6, 1, 16, 16) for _ in range(2)]
    local = [torch.randn(6, 1, 8, 8) for _ in range(3)]
    out = m.training_step((g + local, torch.zeros(6)), 0)
    zg = m.projector(m.backbone(torch.cat(g))).chunk(2)  # BatchNorm: globals as one batch, locals as another
    zl = m.projector(m.backbone(torch.cat(local))).chunk(3)
    z = [*zg, *zl]
    pairs = [(0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (1, 3), (1, 4)]  # never local with local
    want = sum(nt_xent_loss(z[i], z[j], 0.5) for i, j in pairs) / len(pairs)
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-5)
    assert out["features"].shape == (6, m.num_features)
    out["loss"].backward()
    assert all(p.grad is not None for p in m.backbone.parameters())


def test_needs_two_views():
    with pytest.raises(ValueError, match="at least 2 views"):
        model().training_step(([torch.randn(4, 1, 16, 16)], torch.zeros(4)), 0)


def test_simclr_views_at_a_smaller_size():
    views = SimCLRViews(size=12, blur_prob=0.0).build_batched(28, 1, [0.5], [0.5])(torch.rand(5, 1, 28, 28))
    assert [tuple(v.shape) for v in views] == [(5, 1, 12, 12)] * 2
    with pytest.raises(ValueError, match="size must be a positive"):
        SimCLRViews(size=0)


def test_multicrop_views_feed_simclr():
    preset = MultiCropViews(global_crops=2, local_crops=2, local_size=8, jitter_strength=0.5, solarize_prob=0.0)
    views = preset.build_batched(16, 1, [0.5], [0.5])(torch.rand(4, 1, 16, 16))
    assert [v.shape[-1] for v in views] == [16, 16, 8, 8]
    assert torch.isfinite(model().training_step((views, torch.zeros(4)), 0)["loss"])
