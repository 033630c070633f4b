"""Guards that make failures visible: non-finite losses/gradients, and representation collapse."""

from __future__ import annotations

import math
import warnings
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_ssl.callbacks.features import step_features
from lightning_ssl.runs import logged_epoch, logged_step


class NonFiniteError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient."""


class NonFiniteGuard(L.Callback):
    """Stops training (``action="stop"``, default) or skips the optimizer step (``action="skip"``) when the loss
    or a gradient is not finite, with a message naming the step and the method, and refuses to write a
    checkpoint whose weights or buffers contain NaN/inf.

    Checked before the optimizer step, so the weights are still the last finite ones when training stops. A
    skipped step sets every gradient to None: the optimizer then leaves all parameters (and its moments) as
    they were. With a 16-bit GradScaler, infinite gradients are the scaler's business and only the loss is
    checked.

    Args:
        action: ``"stop"`` (raise ``NonFiniteError``) or ``"skip"`` (drop the optimizer step and go on).
        check_gradients: Check the gradients too, not only the loss (one fused check per step).
        max_skips: With ``action="skip"``, stop after this many skipped steps in a run.
    """

    def __init__(self, action: str = "stop", check_gradients: bool = True, max_skips: int = 100) -> None:
        if action not in ("stop", "skip"):
            raise ValueError(f"action must be 'stop' or 'skip', got {action!r}")
        self.action, self.check_gradients, self.max_skips = action, check_gradients, max_skips
        self.skipped = 0
        self._bad: str | None = None

    def _where(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str:
        return (
            f"{type(pl_module).__name__} at optimizer step {trainer.global_step} "
            f"(epoch {trainer.current_epoch}, batch {trainer.fit_loop.epoch_loop.batch_idx})"
        )

    def on_before_backward(self, trainer, pl_module, loss: Tensor) -> None:
        if not torch.isfinite(loss.detach()).all():
            self._bad = f"the loss is {loss.detach().float().item()}"

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        bad = self._bad
        self._bad = None
        if bad is None and self.check_gradients and getattr(trainer.precision_plugin, "scaler", None) is None:
            named = [(n, p.grad) for n, p in pl_module.named_parameters() if p.grad is not None]
            # one fused reduction and one host sync per step; names are looked up only when something is wrong
            if named and not torch.stack(torch._foreach_norm([g for _, g in named])).isfinite().all():
                names = [n for n, g in named if not torch.isfinite(g).all()]  # (a norm can overflow: check each)
                if names:
                    bad = f"gradients are not finite in {len(names)} parameter tensors, e.g. {names[:3]}"
        if bad is None:
            return
        where = self._where(trainer, pl_module)
        if self.action == "stop" or self.skipped >= self.max_skips:
            extra = f" after skipping {self.skipped} steps" if self.skipped else ""
            raise NonFiniteError(
                f"{where}: {bad}{extra}. Training stopped before the optimizer step, "
                f"so the weights are the last finite "
                f"ones and no checkpoint with NaNs was written. Lower the learning rate, use bf16 instead of fp16, "
                f"clip gradients (trainer.gradient_clip_val), or set nonfinite.action=skip to skip such steps."
            )
        for p in pl_module.parameters():
            p.grad = None  # the optimizer skips parameters without a gradient: nothing moves
        self.skipped += 1
        warnings.warn(f"{where}: {bad}; skipped this optimizer step ({self.skipped} so far)", stacklevel=2)
        pl_module.log("train/skipped_steps", float(self.skipped))

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        bad = [
            k
            for k, v in checkpoint.get("state_dict", {}).items()
            if isinstance(v, Tensor) and v.is_floating_point() and not torch.isfinite(v).all()
        ]
        if bad:
            raise NonFiniteError(
                f"refusing to write a checkpoint of {type(pl_module).__name__} at step {trainer.global_step}: "
                f"{len(bad)} tensors contain NaN/inf, e.g. {bad[:3]}. The previous checkpoints are untouched."
            )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))


def embedding_std(z: Tensor) -> float:
    """Mean over dimensions of the per-dimension std of L2-normalized embeddings (SimSiam, sec. 4.1):
    about 1/sqrt(D) for well-spread embeddings, 0 when they have collapsed to one point."""
    return F.normalize(z.float(), dim=1).std(0).mean().item()


def rankme(z: Tensor, eps: float = 1e-7) -> float:
    """RankMe effective rank (Garrido et al., ICML 2023): exp of the entropy of the normalized singular values of
    the (N, D) embedding matrix. D for isotropic embeddings, 1 for a complete collapse."""
    s = torch.linalg.svdvals(z.float())
    p = s / (s.sum() + eps) + eps
    return math.exp(-(p * p.log()).sum().item())


def lidar(views: Tensor, delta: float = 1e-4, eps: float = 1e-8) -> float:
    """LiDAR (Thilak et al., "LiDAR: Sensing Linear Probing Performance in Joint Embedding SSL Architectures",
    ICLR 2024): the effective rank of the linear-discriminant (LDA) matrix whose classes are the samples, each
    seen through several augmentations. With per-sample means mu_x, their mean mu, n samples and q views:
    Sigma_b = sum_x (mu_x - mu)(mu_x - mu)^T / (n - 1), Sigma_w = sum_x,i (e_xi - mu_x)(e_xi - mu_x)^T / (n (q - 1))
    + delta I, Sigma_lidar = Sigma_w^-1/2 Sigma_b Sigma_w^-1/2, LiDAR = exp(-sum_k p_k log p_k) with
    p_k = lambda_k / ||lambda||_1 + eps over its eigenvalues. Between 1 and min(n - 1, D): high when the views of
    one image agree and different images differ along many directions.

    Args:
        views: (n, q, D) embeddings of n >= 2 samples under q >= 2 augmentations each.
        delta: added to Sigma_w's diagonal so it is invertible (in the embeddings' squared units); 1e-4 as in
            stable-pretraining's LiDAR callback. Matters when n (q - 1) < D, where Sigma_w is singular.
        eps: added to each normalized eigenvalue before the entropy, as in the paper.

    Returns:
        The LiDAR score, a float >= 1.
    """
    if views.ndim != 3 or views.shape[0] < 2 or views.shape[1] < 2:
        raise ValueError(
            f"LiDAR needs (n, q, D) embeddings with n >= 2 samples and q >= 2 views, got {tuple(views.shape)}"
        )
    e = views.double()
    n, q, d = e.shape
    mu_x = e.mean(1)  # (n, D)
    between = mu_x - mu_x.mean(0)
    sigma_b = between.T @ between / (n - 1)
    within = (e - mu_x[:, None]).reshape(n * q, d)
    sigma_w = within.T @ within / (n * (q - 1)) + delta * torch.eye(d, dtype=e.dtype, device=e.device)
    w_vals, w_vecs = torch.linalg.eigh(sigma_w)
    inv_sqrt = (w_vecs * w_vals.clamp_min(torch.finfo(e.dtype).tiny).rsqrt()) @ w_vecs.T
    lam = torch.linalg.eigvalsh(inv_sqrt @ sigma_b @ inv_sqrt).clamp_min(0)
    p = lam / lam.sum() + eps
    return math.exp(-(p * p.log()).sum().item())


def alpha_req(z: Tensor, fit_range: tuple[int, int] = (5, 100)) -> float:
    """alpha-ReQ (Agrawal et al., "alpha-ReQ: Assessing Representation Quality in Self-Supervised Learning by
    Measuring Eigenspectrum Decay", NeurIPS 2022): the exponent alpha of a power law lambda_k ~ k^-alpha fitted to
    the eigenvalues lambda_1 >= lambda_2 >= ... of the covariance of the embeddings, by least squares in log-log
    (log lambda_k = c - alpha log k) weighted by 1/k, as the authors' code (``reptrix.alpha.get_powerlaw``) does.
    Near 1 for good representations in the paper; small alpha is a flat (white, noisy) spectrum, large alpha a
    steep one (a few directions hold all the variance: collapse).

    Args:
        z: (N, D) embeddings.
        fit_range: 0-based ranks [start, stop) of the eigenvalues used in the fit; (5, 100), the authors' default,
            leaves out the first five (the head) and stops at rank 100. ``stop`` is clipped to the number of
            eigenvalues, min(N - 1, D); at least 3 must remain.

    Returns:
        alpha, a float (> 0 for a decaying spectrum).
    """
    x = z.double()
    x = x - x.mean(0)
    lam = torch.linalg.svdvals(x) ** 2 / max(1, len(x) - 1)  # covariance eigenvalues, descending
    start, stop = fit_range[0], min(fit_range[1], min(len(x) - 1, x.shape[1]))
    if stop - start < 3:
        raise ValueError(
            f"alpha-ReQ fits ranks [{start}, {stop}): too few eigenvalues (N={len(x)}, D={x.shape[1]}); use more "
            f"samples or a lower fit_range start"
        )
    rank = torch.arange(start + 1, stop + 1, dtype=x.dtype, device=x.device)  # 1-based ranks k
    y = lam[start:stop].clamp_min(torch.finfo(x.dtype).tiny).log()
    design = torch.stack([-rank.log(), torch.ones_like(rank)], dim=1)  # (K, 2): alpha, log c
    w = (1.0 / rank)[:, None]
    coef = torch.linalg.solve(design.T @ (design * w), (design * w).T @ y)
    return coef[0].item()


class CollapseMonitor(L.Callback):
    """Logs ``train/embedding_std`` (x sqrt(D): 1 is healthy, 0 collapsed), ``train/rankme`` and
    ``train/rankme_ratio`` (RankMe / min(N, D)), ``train/alpha_req`` (the eigenspectrum's power-law decay,
    ``alpha_req``) and ``train/lidar`` (``lidar``) of the training step's features (``step_features``: what
    ``embed`` gives for the first view) at the first optimizer step, every ``every_n_steps`` steps on the last
    ``window`` samples, and at the last step, so every run, however short, has the panels; warns (once per epoch)
    when the embeddings look collapsed. ``every_n_steps=0`` turns it off. Features are kept only over the steps that
    fill the window before a measurement, so between them it costs nothing. The values go straight to the loggers at
    the step Lightning logs that moment under (``runs.logged_step``), and into ``trainer.callback_metrics``.

    LiDAR needs several augmentations of the same images: it takes them from the measuring step's batch, whose
    views are augmentations of the same images (SimCLR's two views, DINO's global crops: views of the first
    view's size), and embeds the first ``lidar_samples`` images of each in eval mode without gradient (SimCLR at
    batch 128, every 64 steps: 256 no-grad forwards against 64 x 256 images trained forward and backward, ~0.5%
    of the compute). Methods whose batch has one view (MAE, SimMIM, BEiT, I-JEPA's masks) log no LiDAR.

    For methods whose step does not compute ``embed``'s features (masked inputs: MAE, SimMIM, BEiT) each batch
    of the window would cost an extra no-grad encoder forward (~70% of an MAE step): there it measures the
    measuring step's batch only, and the forward is shared with the online probe's when both measure at that
    step: the default interval, 64, is a multiple of those configs' probe interval (32), so there the monitor
    adds no forward at all beyond the first and the last step's (at an interval of its own it would cost ~1.1% of
    an MAE step at 64).

    Args:
        every_n_steps: optimizer steps between measurements; 0 turns the monitor off.
        window: the number of most recent samples (over the steps before a measurement) that the statistics
            are computed on.
        std_threshold: warn when the std of normalized embeddings x sqrt(D) falls below this (1 is healthy).
        rank_threshold: warn when RankMe / min(N, D) falls below this, in (0, 1].
        lidar_samples: images per measurement whose views give LiDAR (its n; each view is embedded once more);
            0 turns LiDAR off.
    """

    def __init__(
        self,
        every_n_steps: int = 64,
        window: int = 1024,
        std_threshold: float = 0.1,
        rank_threshold: float = 0.05,
        lidar_samples: int = 256,
    ) -> None:
        if lidar_samples < 0:
            raise ValueError(f"lidar_samples must be >= 0 (0 turns LiDAR off), got {lidar_samples}")
        self.every_n_steps, self.window = every_n_steps, window
        self.std_threshold, self.rank_threshold = std_threshold, rank_threshold
        self.lidar_samples = lidar_samples
        self._buffer: list[Tensor] = []
        self._warned_epoch = -1
        self._measured_at = self._buffered_at = -1
        self._last_step: dict[str, Tensor] = {}  # the last step's features or embed input, for the final measure
        self.last: dict[str, float] = {}

    def measure(self, z: Tensor) -> dict[str, float]:
        d = z.shape[1]
        r = rankme(z)
        stats = {"embedding_std": embedding_std(z) * math.sqrt(d), "rankme": r, "rankme_ratio": r / min(z.shape)}
        if min(len(z) - 1, d) - 5 >= 3:  # enough eigenvalues for alpha-ReQ's fit (ranks 6 to 100)
            stats["alpha_req"] = alpha_req(z)
        return stats

    def is_collapsed(self, stats: dict[str, float]) -> bool:
        return stats["embedding_std"] < self.std_threshold or stats["rankme_ratio"] < self.rank_threshold

    def lidar_views(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any) -> Tensor | None:
        """(n, q, D) embeddings of the batch's views that share the first view's shape, or None when the batch
        has fewer than two such views."""
        views = batch[0] if isinstance(batch, (list, tuple)) and batch else None
        if not isinstance(views, (list, tuple)) or not all(isinstance(v, Tensor) for v in views):
            return None
        views = [v[: self.lidar_samples] for v in views if v.shape == views[0].shape]
        if len(views) < 2 or len(views[0]) < 2:
            return None
        embed = getattr(pl_module, "embed", None)
        if not callable(embed):
            raise TypeError(f"LiDAR embeds the views with embed(): {type(pl_module).__name__} has none")
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                z = [embed(v).float().flatten(1) for v in views]
        finally:
            pl_module.train(was_training)
        return torch.stack(z, dim=1)

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch, batch_idx) -> None:
        if self.every_n_steps <= 0 or not isinstance(outputs, dict):
            return
        # features are collected only over the steps that fill the window before a measurement
        step, n = trainer.global_step, self.every_n_steps
        kept = {k: outputs[k].detach() for k in ("features", "embed_input") if isinstance(outputs.get(k), Tensor)}
        self._last_step = kept
        batch_size = len(batch[1]) if isinstance(batch, (list, tuple)) and len(batch) > 1 else 1
        due = step % n == 0 or step == 1
        if not due and n - step % n > -(-self.window // max(1, batch_size)):
            return
        if not due and "features" not in outputs:
            return  # they would cost a forward of their own: only the measuring step's batch is used
        z = step_features(trainer, pl_module, outputs)
        if z is None:
            return
        self._buffer.append(z.detach().float().flatten(1))
        self._buffered_at = step
        if due:
            self._measure(trainer, pl_module, batch)

    def on_train_end(self, trainer, pl_module) -> None:
        """The final model's values, unless the last step was measured."""
        if self.every_n_steps <= 0 or self._measured_at == trainer.global_step or not self._last_step:
            return
        if self._buffered_at != trainer.global_step:
            z = step_features(trainer, pl_module, dict(self._last_step))
            if z is None:
                return
            self._buffer.append(z.detach().float().flatten(1))
        self._measure(trainer, pl_module)

    def _measure(self, trainer, pl_module, batch: Any = None) -> None:
        z = torch.cat(self._buffer)[-self.window :]
        self._buffer = []
        if len(z) < 2:
            return
        self._measured_at = trainer.global_step
        stats = self.measure(z)
        if self.lidar_samples > 0 and batch is not None:
            views = self.lidar_views(trainer, pl_module, batch)
            if views is not None:
                stats["lidar"] = lidar(views)
        self.last = stats
        metrics = {f"train/{k}": v for k, v in stats.items()}
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        for logger in trainer.loggers:
            logger.log_metrics({**metrics, "epoch": logged_epoch(trainer)}, step=logged_step(trainer))
        if self.is_collapsed(stats) and self._warned_epoch != trainer.current_epoch:
            self._warned_epoch = trainer.current_epoch
            warnings.warn(
                f"{type(pl_module).__name__} looks collapsed at step {trainer.global_step}: std of normalized "
                f"embeddings x sqrt(D) = {stats['embedding_std']:.3f} (healthy ~1), "
                f"effective rank {stats['rankme']:.1f} "
                f"of {min(z.shape)}. Check the augmentations, the learning rate, the predictor/stop-gradient and "
                f"the EMA momentum.",
                stacklevel=2,
            )
