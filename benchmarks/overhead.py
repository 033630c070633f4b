"""Training throughput of lightning-ssl (Lightning Trainer, the CLI's callbacks on) against a minimal
hand-written PyTorch loop with the same model, data, batch size, optimizer, schedule and precision.

    scripts/with_jemalloc.sh .venv/bin/python benchmarks/overhead.py [--methods simclr byol mae] [--steps 60]
        [--rounds 3] [--precision auto]
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 ... benchmarks/overhead.py   # what an AVX2-only CPU does

For each method the two are run alternately (ours, plain, ours, plain, ...) in this one process, and each run
is timed from its ``--warmup``-th step to its last, so start-up (Trainer construction, sanity checks, dataloader
workers) is excluded and only the per-step cost is compared. Ours runs with the callbacks ``lightning-ssl fit``
always adds, set as in the method's config (online probe, collapse monitor, non-finite guard; the kNN monitor only acts at validation, which
neither side runs). The precision is what ``auto`` picks on this machine (bf16-mixed only with native bf16).
Prints the machine, then images/s (median and range over the rounds) and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch

from lightning_ssl.callbacks import CollapseMonitor, NonFiniteGuard, OnlineLinearProbe
from lightning_ssl.data import FashionMNISTDataModule, SimCLRViews
from lightning_ssl.losses import byol_loss, mae_loss, nt_xent_loss
from lightning_ssl.methods import BYOL, SimCLR
from lightning_ssl.modules.backbones import SmallCNN
from lightning_ssl.modules.momentum import update_momentum
from lightning_ssl.optim import WarmupCosineLR, param_groups
from lightning_ssl.precision import describe_machine, resolve_precision


def datamodule(batch_size: int) -> FashionMNISTDataModule:
    dm = FashionMNISTDataModule(root="data", batch_size=batch_size, num_workers=0, batch_augment=True, val_bank_size=0,
                                views=SimCLRViews(min_scale=0.4, jitter_strength=0.5, blur_prob=0.0))
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

        vit = ViT(in_channels=1, image_size=28, patch_size=4, embed_dim=96, depth=4, num_heads=3, pool="avg",
                  pos_embed="sincos")  # configs/mae/fashion_mnist.yaml
        return MAE(vit, decoder_dim=64, decoder_depth=2, decoder_heads=4)
    raise ValueError(method)


def monitor_settings(method: str, key: str) -> dict:
    """The monitor's settings in the method's config (MAE's probe runs every 32 steps, as ``lightning-ssl fit``)."""
    import yaml

    with open(f"configs/{method}/fashion_mnist.yaml") as f:
        return dict(yaml.safe_load(f).get(key) or {})


class StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.t0, self.t1, self.images = warmup, 0.0, 0.0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step > self.warmup:
            self.images += len(batch[1])
        self.t1 = time.perf_counter()


def ours_trainer(method: str, steps: int, precision: str, meter: L.Callback, progress_bar: bool = True) -> L.Trainer:
    """The Trainer of ours: ``meter`` first, then the monitors ``lightning-ssl fit`` adds, set as in the config."""
    return L.Trainer(max_steps=steps, precision=precision, accelerator="cpu", devices=1, logger=False,
                     enable_checkpointing=False, enable_progress_bar=progress_bar, enable_model_summary=False,
                     limit_val_batches=0, num_sanity_val_steps=0,
                     callbacks=[meter, OnlineLinearProbe(**monitor_settings(method, "probe")),
                                CollapseMonitor(**monitor_settings(method, "collapse")), NonFiniteGuard()])


def run_ours(method: str, dm, steps: int, warmup: int, precision: str) -> float:
    model = build(method)
    timer = StepTimer(warmup)
    ours_trainer(method, steps, precision, timer).fit(model, datamodule=dm)
    return timer.images / (timer.t1 - timer.t0)


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
            t1, t2 = (model.target_projector(model.target_backbone(x)) for x in (x1, x2))
        return byol_loss(p1, t2) + byol_loss(p2, t1)
    if method == "mae":
        pred, target, mask, _ = model.forward_mae(x1)
        return mae_loss(pred, target, mask, norm_pix=True)
    raise ValueError(method)


def run_plain(method: str, dm, steps: int, warmup: int, precision: str) -> float:
    """The loop a user would write by hand around the same modules."""
    model = build(method).train()
    opt = torch.optim.AdamW(param_groups(model))
    sched = WarmupCosineLR(opt, total_steps=steps)
    images, t0 = 0, 0.0
    step = 0
    while step < steps:
        for x, y in dm.train_dataloader():
            if step == warmup:
                t0 = time.perf_counter()
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
            if step > warmup:
                images += len(y)
            if step >= steps:
                break
    return images / (time.perf_counter() - t0)


class _Training:
    training = True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["simclr", "byol", "mae"])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--precision", default="auto", help="auto (the machine's), 32-true or bf16-mixed")
    a = p.parse_args()
    precision = str(resolve_precision(a.precision, "cpu")[0])
    if precision not in ("32-true", "bf16-mixed"):
        raise SystemExit(f"--precision: this CPU benchmark runs 32-true or bf16-mixed, not {precision}")
    torch.set_float32_matmul_precision("high")
    dm = datamodule(a.batch_size)
    dm.trainer = _Training()  # on_after_batch_transfer augments only while training
    rows = []
    for method in a.methods:
        ours, plain = [], []
        for _ in range(a.rounds):
            dm.trainer = None
            ours.append(run_ours(method, dm, a.steps, a.warmup, precision))
            dm.trainer = _Training()
            plain.append(run_plain(method, dm, a.steps, a.warmup, precision))
        o, q = statistics.median(ours), statistics.median(plain)
        rows.append((method, o, q, o / q, (min(ours), max(ours)), (min(plain), max(plain))))
        print(f"{method}: ours {[round(v) for v in ours]} plain {[round(v) for v in plain]}", flush=True)
    print(f"\n{describe_machine(precision)}\nFashion-MNIST 28 px, batch {a.batch_size}, {a.steps} steps per run "
          f"({a.warmup} warm-up), median [min-max] of {a.rounds} alternating rounds\n")
    print("| method | lightning-ssl (Trainer + callbacks) img/s | plain PyTorch loop img/s | ratio of medians |\n"
          "|---|---|---|---|")
    for m, o, q, r, ro, rq in rows:
        print(f"| {m} | {o:.0f} [{ro[0]:.0f}-{ro[1]:.0f}] | {q:.0f} [{rq[0]:.0f}-{rq[1]:.0f}] | {r:.3f} |")


if __name__ == "__main__":
    main()
