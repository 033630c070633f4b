"""Label-free monitors beside RankMe: LiDAR and alpha-ReQ, as functions and in the collapse monitor."""

import math

import lightning as L
import numpy as np
import pytest
import torch

from lightning_ssl.callbacks import CollapseMonitor
from lightning_ssl.callbacks.guards import alpha_req, lidar
from lightning_ssl.data import SyntheticDataModule
from lightning_ssl.methods import SimCLR
from lightning_ssl.modules.backbones import SmallCNN


def lidar_paper(e: np.ndarray, delta: float, eps: float) -> float:
    """LiDAR transcribed term by term from Thilak et al., ICLR 2024 (arXiv:2312.04000), section 3: the same
    formula as stable-pretraining's ``stable_pretraining/callbacks/lidar.py`` (``_compute_lidar``) and
    reptrix's ``reptrix/lidar.py``. e: (n, q, d) embeddings of n samples under q augmentations."""
    n, q, d = e.shape
    mu_x = [e[x].mean(0) for x in range(n)]
    mu = sum(mu_x) / n
    sigma_b = sum(np.outer(mu_x[x] - mu, mu_x[x] - mu) for x in range(n)) / (n - 1)
    sigma_w = sum(np.outer(e[x, i] - mu_x[x], e[x, i] - mu_x[x]) for x in range(n) for i in range(q)) / (n * (q - 1))
    sigma_w = sigma_w + delta * np.eye(d)
    w, v = np.linalg.eigh(sigma_w)
    inv_sqrt = v @ np.diag(w**-0.5) @ v.T
    lam = np.linalg.eigvalsh(inv_sqrt @ sigma_b @ inv_sqrt)
    lam = np.clip(lam, 0, None)
    p = lam / np.abs(lam).sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def alpha_reptrix(z: np.ndarray, fit_range: np.ndarray) -> float:
    """alpha-ReQ transcribed from the authors' code, reptrix (arnab39/reptrix): ``utils.get_eigenspectrum``
    (PCA explained-variance ratios of the centred activations) then ``alpha.get_powerlaw`` (least squares in
    log-log, weighted by 1/rank, over ``fit_range``)."""
    centred = z - z.mean(0)
    eigen = np.linalg.eigvalsh(centred.T @ centred / (len(z) - 1))[::-1]
    eigen = eigen[: min(z.shape)] / eigen.sum()  # explained_variance_ratio_
    logss = np.log(np.abs(eigen))
    y = logss[fit_range][:, None]
    trange = fit_range + 1
    x = np.concatenate((-np.log(trange)[:, None], np.ones((trange.size, 1))), axis=1)
    w = 1.0 / trange.astype(np.float32)[:, None]
    b = np.linalg.solve(x.T @ (x * w), (w * x).T @ y).flatten()
    return float(b[0])


def test_lidar_matches_the_papers_formula_on_fixed_inputs():
    g = torch.Generator().manual_seed(0)
    views = torch.randn(12, 3, 1, 5, generator=g) + 2 * torch.randn(12, 1, 1, 5, generator=g)
    views = views.squeeze(2)
    for delta in (1e-4, 0.5):
        assert lidar(views, delta=delta) == pytest.approx(lidar_paper(views.double().numpy(), delta, 1e-8), rel=1e-9)
    # fewer samples than dimensions: Sigma_w is singular, delta keeps it invertible
    views = torch.randn(4, 2, 10, generator=g)
    assert lidar(views) == pytest.approx(lidar_paper(views.double().numpy(), 1e-4, 1e-8), rel=1e-6)


def test_lidar_counts_the_directions_that_tell_samples_apart():
    g = torch.Generator().manual_seed(1)
    n, q, k = 400, 4, 6
    means = torch.zeros(n, 32)
    means[:, :k] = 3 * torch.randn(n, k, generator=g)  # samples differ along k directions
    views = means[:, None] + 0.1 * torch.randn(n, q, 32, generator=g)  # augmentations jitter every direction a bit
    assert 5.5 < lidar(views) < 6.5
    noise = torch.randn(n, q, 32, generator=g)  # views no more alike than different samples: no discriminability
    assert lidar(noise) > 25  # the LDA matrix is noise, its spectrum flat
    with pytest.raises(ValueError, match="q >= 2 views"):
        lidar(torch.randn(10, 1, 4))


def test_alpha_req_matches_the_authors_fit_and_recovers_a_power_law():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(300, 150, generator=g, dtype=torch.float64) * torch.linspace(3, 0.1, 150, dtype=torch.float64)
    assert alpha_req(z) == pytest.approx(
        alpha_reptrix(z.numpy(), np.arange(5, 100)), rel=1e-7
    )  # reptrix weights in float32
    assert alpha_req(z, (2, 40)) == pytest.approx(alpha_reptrix(z.numpy(), np.arange(2, 40)), rel=1e-7)
    for true_alpha in (0.8, 1.5):
        scale = torch.arange(1, 257, dtype=torch.float64) ** (-true_alpha / 2)  # variances k^-alpha
        z = torch.randn(8000, 256, generator=g, dtype=torch.float64) * scale
        assert alpha_req(z) == pytest.approx(true_alpha, abs=0.05)
    with pytest.raises(ValueError, match="too few eigenvalues"):
        alpha_req(torch.randn(6, 32))


def _fit(model, monitor, dm):
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        callbacks=[monitor],
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=dm)
    return trainer


def test_collapse_monitor_logs_lidar_from_the_batch_views_and_alpha_req():
    """LiDAR takes the measuring step's views (SimCLR: two augmentations of the same images), embeds them like
    evaluation does, and is logged beside RankMe; the value is LiDAR of exactly those embeddings."""
    dm = SyntheticDataModule(num_samples=64, batch_size=16, num_workers=0, image_size=16, channels=1, val_bank_size=0)
    model = SimCLR(SmallCNN(1, 16, width=8), proj_hidden_dim=16, proj_dim=8)
    seen = []
    mon = CollapseMonitor(every_n_steps=2, window=32, lidar_samples=12)
    mon.lidar_views = lambda t, m, b, _f=mon.lidar_views: seen.append(_f(t, m, b)) or seen[-1]
    trainer = _fit(model, mon, dm)
    assert {"train/lidar", "train/alpha_req", "train/rankme"} <= set(trainer.callback_metrics)
    assert seen[-1].shape == (12, 2, 32)  # 12 images x 2 views x 32-d features
    assert mon.last["lidar"] == pytest.approx(lidar(seen[-1]))
    assert math.isfinite(mon.last["alpha_req"])
    off = CollapseMonitor(every_n_steps=2, lidar_samples=0)
    _fit(SimCLR(SmallCNN(1, 16, width=8), proj_hidden_dim=16, proj_dim=8), off, dm)
    assert "lidar" not in off.last
    assert "rankme" in off.last
    with pytest.raises(ValueError, match="lidar_samples must be >= 0"):
        CollapseMonitor(lidar_samples=-1)
