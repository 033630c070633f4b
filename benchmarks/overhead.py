"""Training throughput of lightning-ssl (Lightning Trainer, the CLI's callbacks on) against a minimal
hand-written PyTorch loop with the same model, data, batch size, optimizer, schedule and precision.

    scripts/with_jemalloc.sh .venv/bin/python benchmarks/overhead.py [--methods simclr byol mae] [--steps 60]
        [--rounds 3] [--precision auto]
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 ... benchmarks/overhead.py   # what an AVX2-only CPU does

For each method and round, ours trains for ``--steps`` steps and, by default (``--mode interleaved``), the plain
loop takes one step of its own after each of ours' steps (a callback placed after ours' monitors), the two timed
apart: a VM whose speed drifts by 10-15% over minutes slows both alike, which separate runs cannot promise
(``--mode alternating`` runs them one after the other instead, the order swapped every round). Each side is
timed from its ``--warmup``-th step to its last, so start-up (Trainer construction, sanity checks, dataloader
workers) is excluded and only the per-step cost is compared. Ours runs with the callbacks ``lightning-ssl fit``
always adds, set as in the method's config (online probe, collapse monitor, non-finite guard; the kNN monitor only acts
at validation, which neither side runs) and ``performance.channels_last: auto``; the plain loop uses the same memory
format (channels-last for the CNNs, NCHW for MAE's ViT), so only the framework's per-step cost differs. The precision is
what ``lightning-ssl fit`` picks for the method here (``auto``: fp32 without native bf16; with it, the faster of the
two for the backbone, ``measure_cpu_precision``).
Prints the machine, then images/s (median and range over the rounds), the ratio of the medians, and the median
and range of the per-round ratios (each round's two runs are adjacent in time, so their ratio is the least
affected by a VM whose speed moves by 10-15% over minutes).
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch
from timing import StepTimer

from lightning_ssl.callbacks import CollapseMonitor, NonFiniteGuard, OnlineLinearProbe
from lightning_ssl.callbacks.performance import Performance, _to_channels_last, is_convolutional
from lightning_ssl.data import FashionMNISTDataModule, SimCLRViews
from lightning_ssl.losses import byol_loss, mae_loss, nt_xent_loss
from lightning_ssl.methods import BYOL, SimCLR
from lightning_ssl.modules.backbones import SmallCNN
from lightning_ssl.modules.momentum import update_momentum
from lightning_ssl.optim import WarmupCosineLR, param_groups
from lightning_ssl.precision import cpu_bf16_support, describe_machine, measure_cpu_precision, resolve_precision


def datamodule(batch_size: int) -> FashionMNISTDataModule:
    dm = FashionMNISTDataModule(
        root="data",
        batch_size=batch_size,
        num_workers=0,
        batch_augment=True,
        val_bank_size=0,
        views=SimCLRViews(min_scale=0.4, jitter_strength=0.5, blur_prob=0.0),
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def build(method: str):
    torch.manual_seed(0)
    backbone = SmallCNN(1, 28, width=16, stages=4)
    if method == "simclr":
        return SimCLR(backbone, proj_hidden_dim=512, proj_dim=128, temperature=0.2)
    if method == "byol":
        return BYOL(backbone, proj_hidden_dim=512, proj_dim=128, pred_hidden_dim=512, momentum=0.99)
    if method == "mae":
        from lightning_ssl.methods import MAE
        from lightning_ssl.modules.vit import ViT

        vit = ViT(
            in_channels=1,
            image_size=28,
            patch_size=4,
            embed_dim=96,
            depth=4,
            num_heads=3,
            pool="avg",
            pos_embed="sincos",
        )  # configs/mae/fashion_mnist.yaml
        return MAE(vit, decoder_dim=64, decoder_depth=2, decoder_heads=4)
    raise ValueError(method)


def monitor_settings(method: str, key: str) -> dict:
    """The monitor's settings in the method's config (MAE's probe runs every 32 steps, as ``lightning-ssl fit``)."""
    import yaml

    with open(f"configs/{method}/fashion_mnist.yaml") as f:
        return dict(yaml.safe_load(f).get(key) or {})


def ours_trainer(
    method: str,
    steps: int,
    precision: str,
    meter: L.Callback | None,
    progress_bar: bool = True,
    last: L.Callback | None = None,
) -> L.Trainer:
    """The Trainer of ours: ``meter`` first, then the monitors ``lightning-ssl fit`` adds, set as in the config,
    then ``last``."""
    return L.Trainer(
        max_steps=steps,
        precision=precision,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[
            c
            for c in (
                meter,
                OnlineLinearProbe(**monitor_settings(method, "probe")),
                CollapseMonitor(**monitor_settings(method, "collapse")),
                NonFiniteGuard(),
                Performance(),
                last,
            )
            if c is not None
        ],
    )


def run_ours(method: str, dm, steps: int, warmup: int, precision: str) -> float:
    model = build(method)
    timer = StepTimer(warmup)
    ours_trainer(method, steps, precision, timer).fit(model, datamodule=dm)
    return timer.rate


def plain_loss(method: str, model, views) -> torch.Tensor:
    x1, x2 = views
    if method == "simclr":
        h = model.backbone(torch.cat([x1, x2]))
        z1, z2 = model.projector(h).chunk(2)
        return nt_xent_loss(z1, z2, 0.2)
    if method == "byol":
        p1 = model.predictor(model.projector(model.backbone(x1)))
        p2 = model.predictor(model.projector(model.backbone(x2)))
        with torch.no_grad():
            t1, t2 = (model.teacher_projector(model.teacher_backbone(x)) for x in (x1, x2))
        return byol_loss(p1, t2) + byol_loss(p2, t1)
    if method == "mae":
        pred, target, mask, _ = model.forward_mae(x1)
        return mae_loss(pred, target, mask, norm_pix=True)
    raise ValueError(method)


def plain_steps(method: str, dm, steps: int, precision: str):
    """The loop a user would write by hand around the same modules, as a generator: one training step (batch,
    augmentation, forward, backward, optimizer, schedule, EMA) per ``next``, yielding the batch's image count."""
    model = build(method).train()
    nhwc = is_convolutional(model.backbone)  # the memory format ours picks (performance.channels_last: auto)
    if nhwc:  # weights, and the backbone's input at each forward
        model.to(memory_format=torch.channels_last)
        model.backbone.register_forward_pre_hook(_to_channels_last)  # the hook ours' Performance callback adds
    opt = torch.optim.AdamW(param_groups(model))
    sched = WarmupCosineLR(opt, total_steps=steps)
    step = 0
    while step < steps:
        for x, y in dm.train_dataloader():
            views, _ = dm.on_after_batch_transfer((x, y), 0)  # the same batched augmentation
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
                loss = plain_loss(method, model, views)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if method == "byol":
                for s, t in model.momentum_pairs():
                    update_momentum(s, t, 0.99)
            step += 1
            yield len(y)
            if step >= steps:
                break


def run_plain(method: str, dm, steps: int, warmup: int, precision: str, profiler=None) -> float:
    """The plain loop alone, timed from its ``warmup``-th step. ``profiler`` (a torch.profiler context) is
    entered where the timer starts and left after the last step."""
    it = plain_steps(method, dm, steps, precision)
    for _ in range(warmup):
        next(it)
    if profiler is not None:
        profiler.__enter__()
    t0 = time.perf_counter()
    images = sum(it)
    seconds = time.perf_counter() - t0
    if profiler is not None:
        profiler.__exit__(None, None, None)
    return images / seconds


class Interleaved(L.Callback):
    """Runs one step of the plain loop after each of ours' steps (after all of ours' callbacks: put it last), and
    times the two apart: ours' cycle is the time from the end of one plain step to the end of ours' next batch
    (data, augmentation, step, callbacks), the plain one's is its own step. Both run in the same seconds, so a
    machine whose speed drifts over minutes slows both alike."""

    def __init__(self, plain, warmup: int) -> None:
        self.plain, self.warmup = plain, warmup
        self.ours_s = self.plain_s = 0.0
        self.ours_images = self.plain_images = 0
        self._since: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        counted = trainer.global_step > self.warmup
        if counted and self._since is not None:
            self.ours_s += now - self._since
            self.ours_images += len(batch[1])
        t = time.perf_counter()
        n = next(self.plain, 0)
        if counted:
            self.plain_s += time.perf_counter() - t
            self.plain_images += n
        self._since = time.perf_counter()


def run_interleaved(method: str, dm, steps: int, warmup: int, precision: str) -> tuple[float, float]:
    """(ours img/s, plain img/s) from one fit of ours with the plain loop stepping in between."""
    meter = Interleaved(plain_steps(method, dm, steps, precision), warmup)
    ours_trainer(method, steps, precision, None, progress_bar=False, last=meter).fit(build(method), datamodule=dm)
    return meter.ours_images / meter.ours_s, meter.plain_images / meter.plain_s


class _Training:
    training = True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["simclr", "byol", "mae"])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--precision", default="auto", help="auto (the machine's), 32-true or bf16-mixed")
    p.add_argument(
        "--mode",
        choices=["interleaved", "alternating"],
        default="interleaved",
        help="step by step within one run (default), or whole runs one after the other",
    )
    a = p.parse_args()
    hardware = str(resolve_precision(a.precision, "cpu")[0])
    if hardware not in ("32-true", "bf16-mixed"):
        raise SystemExit(f"--precision: this CPU benchmark runs 32-true or bf16-mixed, not {hardware}")

    def precision_for(method: str) -> str:  # as `lightning-ssl fit` chooses it for this backbone
        if a.precision != "auto" or not cpu_bf16_support()[0]:
            return hardware
        backbone = build(method).backbone
        return measure_cpu_precision(backbone, 1, 28, a.batch_size, channels_last=is_convolutional(backbone))[0]

    torch.set_float32_matmul_precision("high")
    dm = datamodule(a.batch_size)
    dm.trainer = _Training()  # on_after_batch_transfer augments only while training
    rows = []
    for method in a.methods:
        precision = precision_for(method)
        ours, plain = [], []
        for r in range(a.rounds):
            if a.mode == "interleaved":  # one fit of ours, the plain loop stepping between its steps
                dm.trainer = None
                o, q = run_interleaved(method, dm, a.steps, a.warmup, precision)
                ours.append(o)
                plain.append(q)
                continue
            for side in ("ours", "plain") if r % 2 == 0 else ("plain", "ours"):
                if side == "ours":
                    dm.trainer = None
                    ours.append(run_ours(method, dm, a.steps, a.warmup, precision))
                else:
                    dm.trainer = _Training()
                    plain.append(run_plain(method, dm, a.steps, a.warmup, precision))
        o, q = statistics.median(ours), statistics.median(plain)
        paired = [x / y for x, y in zip(ours, plain, strict=True)]
        rows.append((method, precision, o, q, o / q, (min(ours), max(ours)), (min(plain), max(plain)), paired))
        print(
            f"{method}: ours {[round(v) for v in ours]} plain {[round(v) for v in plain]} "
            f"per-round ratios {[round(v, 3) for v in paired]}",
            flush=True,
        )
    print(
        f"\n{describe_machine('per row')}\nFashion-MNIST 28 px, batch {a.batch_size}, {a.steps} steps per run "
        f"({a.warmup} warm-up), median [min-max] of {a.rounds} rounds, {a.mode}\n"
    )
    print(
        "| method | precision | lightning-ssl (Trainer + callbacks) img/s | "
        "plain PyTorch loop img/s | ratio of medians "
        "| per-round ratio, median [min-max] |\n|---|---|---|---|---|---|"
    )
    for m, prec, o, q, r, ro, rq, paired in rows:
        print(
            f"| {m} | {prec} | {o:.0f} [{ro[0]:.0f}-{ro[1]:.0f}] | {q:.0f} [{rq[0]:.0f}-{rq[1]:.0f}] | {r:.3f} "
            f"| {statistics.median(paired):.3f} [{min(paired):.3f}-{max(paired):.3f}] |"
        )


if __name__ == "__main__":
    main()
