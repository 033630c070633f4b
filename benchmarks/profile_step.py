"""Where a training step's time goes: torch.profiler over the same steps of lightning-ssl (Trainer + the CLI's
monitors) and of the plain loop of ``benchmarks/overhead.py``, side by side: total CPU time per step, and the
operators whose self time per step differs most between the two.

    scripts/with_jemalloc.sh .venv/bin/python benchmarks/profile_step.py [--methods simclr byol] [--steps 30]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import lightning as L
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
import overhead

from lightning_ssl.precision import describe_machine, resolve_precision


class Profiled(L.Callback):
    """Starts the profiler at step ``warmup`` and stops it after the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.prof = warmup, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup and self.prof is None:
            self.prof = profile(activities=[ProfilerActivity.CPU])
            self.prof.__enter__()
            self.t0 = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.t0
        self.prof.__exit__(None, None, None)


def profile_ours(method: str, dm, steps: int, warmup: int, precision: str):
    model = overhead.build(method)
    prof = Profiled(warmup)
    trainer = overhead.ours_trainer(method, steps, precision, prof, progress_bar=False)
    dm.trainer = None
    trainer.fit(model, datamodule=dm)
    return prof.prof, prof.seconds


def profile_plain(method: str, dm, steps: int, warmup: int, precision: str):
    dm.trainer = overhead._Training()
    prof = profile(activities=[ProfilerActivity.CPU])
    # one run: its first ``warmup`` steps unprofiled, as in ours (the loader is already running at the window's start)
    rate = overhead.run_plain(method, dm, steps, warmup, precision, profiler=prof)
    return prof, (steps - warmup) * dm.batch_size / rate


def self_times(prof) -> dict[str, float]:
    return {e.key: e.self_cpu_time_total for e in prof.key_averages()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["simclr", "byol"])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--precision", default="auto")
    a = p.parse_args()
    precision = str(resolve_precision(a.precision, "cpu")[0])
    torch.set_float32_matmul_precision("high")
    dm = overhead.datamodule(a.batch_size)
    n = a.steps - a.warmup
    print(f"{describe_machine(precision)}\nFashion-MNIST 28 px, batch {a.batch_size}, {n} profiled steps per side\n")
    for method in a.methods:
        po, so = profile_ours(method, dm, a.steps, a.warmup, precision)
        pp, sp = profile_plain(method, dm, a.steps, a.warmup, precision)
        to, tp = self_times(po), self_times(pp)
        print(
            f"## {method}: wall per step ours {1e3 * so / n:.1f} ms, plain {1e3 * sp / n:.1f} ms; profiled CPU "
            f"self time per step ours {sum(to.values()) / n / 1e3:.1f} ms, plain {sum(tp.values()) / n / 1e3:.1f} ms\n"
        )
        print("| operator | ours ms/step | plain ms/step | difference |\n|---|---|---|---|")
        keys = sorted(set(to) | set(tp), key=lambda k: -abs(to.get(k, 0) - tp.get(k, 0)))
        for k in keys[: a.top]:
            o, q = to.get(k, 0) / n / 1e3, tp.get(k, 0) / n / 1e3
            print(f"| {k} | {o:.2f} | {q:.2f} | {o - q:+.2f} |")
        print(flush=True)


if __name__ == "__main__":
    main()
