"""lightning-ssl against the `lightly` package: the same method (SimCLR, BYOL), backbone, views, batch size,
optimizer, LR schedule, precision and number of epochs on Fashion-MNIST; training images/s and kNN top-1 of each,
in one table. `lightly` is a benchmark-only dependency:

    .venv/bin/pip install -c requirements/constraints.txt -r requirements/bench.txt
    scripts/with_jemalloc.sh .venv/bin/python benchmarks/vs_lightly.py [--steps 150] [--rounds 3] [--precision auto]
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 ... benchmarks/vs_lightly.py   # what an AVX2-only CPU does

Both sides train with the same Lightning Trainer settings, at the precision ``auto`` picks on this machine; ours
with the callbacks ``lightning-ssl fit`` always adds (online probe, collapse monitor, non-finite guard) and its
default ``performance.channels_last: auto`` (channels-last for this CNN); lightly as its examples do (NCHW), or
with ``--lightly-channels-last`` in the same memory format as ours, which isolates the rest of the difference. The
implementations alternate within each of ``--rounds`` rounds, the order swapped every round (so a drift of the
machine's speed favours neither); the table gives the median images/s with the range over the rounds, and the
kNN of the last round's models; the ratio line adds the median and range of the per-round ratios (the two runs
of a round are adjacent in time: their ratio is the least affected by a VM whose speed moves over minutes). The
lightly modules follow lightly's documented examples (projection/prediction heads, NTXentLoss /
NegativeCosineSimilarity, update_momentum with cosine_schedule in training_step). Rows "same views" feed both the
identical batches (our datamodule, batched augmentation); the row "own views" gives lightly its own per-image
SimCLRTransform in a dataloader worker, which is how lightly is normally used. Throughput is wall time per image
after the first 20 steps of each run (warm-up): data, augmentation, step and callbacks. kNN: weighted, cosine,
T=0.07, bank = all 60k training images.
"""

from __future__ import annotations

import argparse
import copy
import time

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_ssl.callbacks import CollapseMonitor, NonFiniteGuard, OnlineLinearProbe
from lightning_ssl.callbacks.performance import Performance
from lightning_ssl.data import FashionMNISTDataModule, SimCLRViews
from lightning_ssl.eval.report import evaluate_knn
from lightning_ssl.methods import BYOL, SimCLR
from lightning_ssl.modules.backbones import SmallCNN
from lightning_ssl.optim import WarmupCosineLR, param_groups
from lightning_ssl.precision import describe_machine, resolve_precision

LR, WD, TEMPERATURE = 2e-3, 1e-4, 0.2


def backbone() -> nn.Module:
    return SmallCNN(1, 28, width=16, stages=4)


def optimizers(module: L.LightningModule):
    opt = torch.optim.AdamW(param_groups(module), lr=LR, weight_decay=WD)
    sched = WarmupCosineLR(opt, warmup_steps=0.05, total_steps=module.trainer.estimated_stepping_batches)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class LightlySimCLR(L.LightningModule):
    def __init__(self) -> None:
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead

        super().__init__()
        self.backbone = backbone()
        self.projection_head = SimCLRProjectionHead(self.backbone.num_features, 512, 128)
        self.criterion = NTXentLoss(temperature=TEMPERATURE)

    def forward(self, x):
        return self.projection_head(self.backbone(x).flatten(start_dim=1))

    def training_step(self, batch, batch_idx):
        x0, x1 = batch[0]
        loss = self.criterion(self.forward(x0), self.forward(x1))
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return optimizers(self)


class LightlyBYOL(L.LightningModule):
    def __init__(self) -> None:
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.backbone = backbone()
        self.projection_head = BYOLProjectionHead(self.backbone.num_features, 512, 128)
        self.prediction_head = BYOLPredictionHead(128, 512, 128)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NegativeCosineSimilarity()

    def forward(self, x):
        return self.prediction_head(self.projection_head(self.backbone(x).flatten(start_dim=1)))

    def forward_momentum(self, x):
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()

    def training_step(self, batch, batch_idx):
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        m = cosine_schedule(self.global_step, int(self.trainer.estimated_stepping_batches), 0.99, 1.0)
        update_momentum(self.backbone, self.backbone_momentum, m=m)
        update_momentum(self.projection_head, self.projection_head_momentum, m=m)
        x0, x1 = batch[0]
        p0, p1 = self.forward(x0), self.forward(x1)
        z0, z1 = self.forward_momentum(x0), self.forward_momentum(x1)
        loss = 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return optimizers(self)


class OursSimCLR(SimCLR):
    def configure_optimizers(self):
        return optimizers(self)


class OursBYOL(BYOL):
    def configure_optimizers(self):
        return optimizers(self)


class LightlyViews(Dataset):
    """Fashion-MNIST through lightly's own per-image transform (PIL), as lightly's examples do."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        from lightly.transforms import SimCLRTransform
        from PIL import Image

        self.images, self.labels, self.pil = images, labels, Image
        self.transform = SimCLRTransform(
            input_size=28,
            cj_strength=0.5,
            cj_sat=0.0,
            cj_hue=0.0,
            min_scale=0.4,
            random_gray_scale=0.0,
            gaussian_blur=0.0,
            normalize={"mean": [0.2860], "std": [0.3530]},
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.pil.fromarray(self.images[i].squeeze(0).numpy(), mode="L")), int(self.labels[i])


class Throughput(L.Callback):
    """Images/s over the wall time from the end of batch ``warmup`` to the end of the last batch: whole cycles of
    data, augmentation, step and every callback (monitors included), as a user waits for them. The first
    ``warmup`` batches (kernel selection, allocator warm-up) are left out."""

    def __init__(self, warmup: int = 20) -> None:
        self.warmup, self.seen = warmup, 0
        self.images, self.seconds, self._t0 = 0, 0.0, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen += 1
        now = time.perf_counter()
        if self.seen == self.warmup:
            self._t0 = now
        elif self.seen > self.warmup:
            self.images += len(batch[1])
            self.seconds = now - self._t0


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
    return dm


def train(model: L.LightningModule, a, own_views: bool, monitors: bool, evaluate: bool) -> dict:
    dm = datamodule(a.batch_size)
    meter = Throughput()
    if monitors:  # ours, as `lightning-ssl fit` runs it
        extra = [OnlineLinearProbe(), CollapseMonitor(), NonFiniteGuard(), Performance()]
    else:
        extra = [Performance(channels_last=True)] if a.lightly_channels_last else []
    limit = {"max_steps": a.steps, "max_epochs": -1} if a.steps else {"max_epochs": a.epochs}
    trainer = L.Trainer(
        **limit,
        precision=a.precision,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        callbacks=[meter, *extra],
    )
    batch_size = a.batch_size
    t0 = time.perf_counter()
    if own_views:
        dm.setup("fit")
        images, labels = dm.train_set.images, dm.train_set.labels
        loader = DataLoader(
            LightlyViews(images, labels),
            batch_size=batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=1,
            persistent_workers=True,
        )
        trainer.fit(model, train_dataloaders=loader)
        # the per-image pipeline runs in the worker, in parallel with the step: count wall time per image
        seconds = time.perf_counter() - t0
        ips = meter.seen * batch_size / seconds
    else:
        trainer.fit(model, datamodule=dm)
        ips = meter.images / meter.seconds
    knn = evaluate_knn(model.backbone, datamodule(512)) if evaluate else {"k=20": float("nan"), "k=200": float("nan")}
    return {"images_per_s": ips, "knn20": knn["k=20"], "knn200": knn["k=200"], "wall_s": time.perf_counter() - t0}


def main() -> None:
    import statistics

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100, help="optimizer steps per run (0: --epochs instead)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--methods", nargs="+", default=["simclr", "byol"])
    p.add_argument("--lightly-channels-last", action="store_true", help="lightly in channels-last memory format too")
    p.add_argument("--own-views", action="store_true", help="also lightly with its own per-image views (SimCLR)")
    p.add_argument("--precision", default="auto", help="auto (the machine's), 32-true or bf16-mixed")
    a = p.parse_args()
    a.precision = str(resolve_precision(a.precision, "cpu")[0])
    rows, per_method = [], {}
    for method in a.methods:
        runs = [
            (
                "lightning-ssl",
                lambda method=method: (
                    OursSimCLR(backbone(), 512, 128, TEMPERATURE)
                    if method == "simclr"
                    else OursBYOL(backbone(), 512, 128, 512, momentum=0.99)
                ),
                False,
            ),
            ("lightly (same views)", LightlySimCLR if method == "simclr" else LightlyBYOL, False),
        ]
        if method == "simclr" and a.own_views:
            runs.append(("lightly (own views, 1 worker)", LightlySimCLR, True))
        results: dict[str, list[dict]] = {name: [] for name, _, _ in runs}
        per_method[method] = results
        for r in range(a.rounds):
            for name, factory, own in runs if r % 2 == 0 else runs[::-1]:
                torch.manual_seed(0)
                out = train(factory(), a, own, monitors=name == "lightning-ssl", evaluate=r == a.rounds - 1)
                results[name].append(out)
                print(method, name, f"round {r + 1}", {k: round(v, 4) for k, v in out.items()}, flush=True)
        for name, _, _ in runs:
            rates = [o["images_per_s"] for o in results[name]]
            rows.append((method, name, statistics.median(rates), min(rates), max(rates), results[name][-1]))
    length = f"{a.steps} steps" if a.steps else f"{a.epochs} epochs"
    layout = (
        "channels-last on both sides" if a.lightly_channels_last else "ours channels-last (its default), lightly NCHW"
    )
    print(
        f"\n{describe_machine(a.precision)}\nFashion-MNIST, SmallCNN(width 16, 4 stages), batch {a.batch_size}, "
        f"AdamW lr {LR}, warmup+cosine, {length} per run, median [min-max] of {a.rounds} alternating rounds; "
        f"{layout}\n"
    )
    print("| method | implementation | train images/s | kNN top-1 k=20 | kNN top-1 k=200 |\n|---|---|---|---|---|")
    for method, name, med, lo, hi, last in rows:
        print(
            f"| {method} | {name} | {med:.0f} [{lo:.0f}-{hi:.0f}] | {100 * last['knn20']:.2f}% | "
            f"{100 * last['knn200']:.2f}% |"
        )
    for method, results in per_method.items():
        ours = [o["images_per_s"] for o in results["lightning-ssl"]]
        peer = [o["images_per_s"] for o in results["lightly (same views)"]]
        paired = [x / y for x, y in zip(ours, peer, strict=True)]
        print(
            f"{method}: throughput lightning-ssl / lightly (same views): ratio of medians "
            f"{statistics.median(ours) / statistics.median(peer):.3f}, per-round ratio median "
            f"{statistics.median(paired):.3f} [{min(paired):.3f}-{max(paired):.3f}]"
        )


if __name__ == "__main__":
    main()
