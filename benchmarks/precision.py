"""fp32 against bf16-mixed for the demo's training step, side by side in one run, and what ``precision: auto``
picks here. Why the precision is chosen per machine: bf16 is faster only where the hardware computes it natively.

    scripts/with_jemalloc.sh .venv/bin/python benchmarks/precision.py [--config configs/simclr/fashion_mnist.yaml]
        [--steps 40] [--rounds 3] [--emulate-avx2]

Each precision trains the config's model on its own data through the Trainer (all the CLI's callbacks on) for
``--steps`` optimizer steps; images/s are timed from the ``--warmup``-th step on, alternately fp32 / bf16 for
``--rounds`` rounds, median reported. ``--emulate-avx2`` repeats the measurement in a child process with oneDNN
and ATen limited to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``), which is what a CPU without
AVX-512/AMX (e.g. an AMD EPYC of an ordinary cloud VM) does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import lightning as L
import torch

from lightning_ssl.cli import cli
from lightning_ssl.precision import auto_precision, describe_machine


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


def images_per_s(config: str, precision: str, steps: int, warmup: int) -> float:
    c = cli(["--config", config, f"--trainer.precision={precision}", f"--trainer.max_steps={steps}",
             "--trainer.logger=false", "--trainer.enable_progress_bar=false",
             "--trainer.enable_model_summary=false", "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
             "--trainer.default_root_dir=outputs/bench_precision", "--checkpoint.dirpath=outputs/bench_precision/ckpt"],
            run=False)
    timer = StepTimer(warmup)
    c.trainer.callbacks.append(timer)
    c.trainer.fit(c.model, datamodule=c.datamodule)
    return timer.images / (timer.t1 - timer.t0)


def measure(a) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"32-true": [], "bf16-mixed": []}
    for _ in range(a.rounds):
        for p in out:
            out[p].append(images_per_s(a.config, p, a.steps, a.warmup))
            print(f"{p}: {out[p][-1]:.0f} img/s", file=sys.stderr, flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/simclr/fashion_mnist.yaml")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--emulate-avx2", action="store_true")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # the child process's output
    a = p.parse_args()
    results = measure(a)
    if a.json:
        print(json.dumps({"machine": describe_machine(), "auto": auto_precision()[0], "results": results}))
        return
    rows = [("this machine, as it is", auto_precision()[0], results)]
    if a.emulate_avx2:
        env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2")
        cmd = [sys.executable, __file__, "--config", a.config, "--steps", str(a.steps), "--warmup", str(a.warmup),
               "--rounds", str(a.rounds), "--json"]
        child = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        rows.append(("the same CPU limited to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2)", child["auto"],
                     child["results"]))
    print(f"\n{describe_machine('see table')}\n{a.config}: training step through the Trainer, median of {a.rounds} "
          f"alternating rounds of {a.steps} steps ({a.warmup} warm-up)\n")
    print("| machine | fp32 (32-true) img/s | bf16-mixed img/s | bf16 / fp32 | `auto` picks |\n|---|---|---|---|---|")
    for name, auto, res in rows:
        f32, b16 = statistics.median(res["32-true"]), statistics.median(res["bf16-mixed"])
        print(f"| {name} | {f32:.0f} | {b16:.0f} | {b16 / f32:.2f}x | {auto} |")


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    main()
