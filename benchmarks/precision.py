"""fp32 against bf16-mixed, each in NCHW and channels-last memory format, for the demo's training step, side by
side in one run, and what ``precision: auto`` and ``performance.channels_last: auto`` pick here. Why the
precision is chosen per machine: bf16 is faster only where the hardware computes it natively.

    scripts/with_jemalloc.sh .venv/bin/python benchmarks/precision.py [--config configs/simclr/fashion_mnist.yaml]
        [--steps 40] [--rounds 3] [--emulate-avx2]

Each precision trains the config's model on its own data through the Trainer (all the CLI's callbacks on) for
``--steps`` optimizer steps; images/s are timed from the ``--warmup``-th step on, the four settings alternating
for ``--rounds`` rounds, median reported. ``--emulate-avx2`` repeats the measurement in a child process with oneDNN
and ATen limited to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``), which is what a CPU without
AVX-512/AMX (e.g. an AMD EPYC of an ordinary cloud VM) does; emulated bf16 is ~15x slower than fp32 there, so
that child runs one round of ``--emulated-steps`` steps (a quarter of them warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import torch
from timing import StepTimer

from lightning_ssl.cli import cli
from lightning_ssl.precision import describe_machine

SETTINGS = [("32-true", "false"), ("32-true", "true"), ("bf16-mixed", "false"), ("bf16-mixed", "true")]


def images_per_s(config: str, precision: str, channels_last: str, steps: int, warmup: int) -> float:
    c = cli(
        [
            "--config",
            config,
            f"--trainer.precision={precision}",
            f"--performance.channels_last={channels_last}",
            f"--trainer.max_steps={steps}",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--trainer.limit_val_batches=0",
            "--trainer.num_sanity_val_steps=0",
            "--trainer.default_root_dir=outputs/bench_precision",
            "--checkpoint.dirpath=outputs/bench_precision/ckpt",
        ],
        run=False,
    )
    timer = StepTimer(warmup)
    c.trainer.callbacks.append(timer)
    c.trainer.fit(c.model, datamodule=c.datamodule)
    return timer.rate


def measure(a) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {f"{p} {cl}": [] for p, cl in SETTINGS}
    for _ in range(a.rounds):
        for p, cl in SETTINGS:
            out[f"{p} {cl}"].append(images_per_s(a.config, p, cl, a.steps, a.warmup))
            print(f"{p}, channels_last={cl}: {out[f'{p} {cl}'][-1]:.0f} img/s", file=sys.stderr, flush=True)
    return out


def what_auto_picks(config: str) -> tuple[str, bool]:
    """The precision ``lightning-ssl fit`` picks for this config here (the backbone timed where the CPU has native
    bf16) and whether ``channels_last: auto`` turns channels-last on."""
    from lightning_ssl.callbacks.performance import is_convolutional

    c = cli(["--config", config, "--trainer.logger=false"], run=False)
    return str(c.trainer.precision), is_convolutional(getattr(c.model, "backbone", None))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/simclr/fashion_mnist.yaml")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--emulate-avx2", action="store_true")
    p.add_argument("--emulated-steps", type=int, default=12, help="steps per run in the AVX2 child (1 round)")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # the child process's output
    a = p.parse_args()
    results = measure(a)
    if a.json:
        print(json.dumps({"machine": describe_machine(), "auto": what_auto_picks(a.config)[0], "results": results}))
        return
    auto, nhwc = what_auto_picks(a.config)
    rows = [("this machine, as it is", auto, results)]
    if a.emulate_avx2:
        env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2")
        cmd = [
            sys.executable,
            __file__,
            "--config",
            a.config,
            "--steps",
            str(a.emulated_steps),
            "--warmup",
            str(max(1, a.emulated_steps // 4)),
            "--rounds",
            "1",
            "--json",
        ]
        child = json.loads(
            subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
        )
        rows.append(
            (
                f"the same CPU limited to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2; 1 round of "
                f"{a.emulated_steps} steps)",
                child["auto"],
                child["results"],
            )
        )
    nhwc = "channels-last" if nhwc else "NCHW"
    print(
        f"\n{describe_machine('see table')}\n{a.config}: training step through the Trainer, img/s, median of "
        f"{a.rounds} alternating rounds of {a.steps} steps ({a.warmup} warm-up); `channels_last: auto` picks {nhwc} "
        f"for this backbone\n"
    )
    print(
        "| machine | fp32 NCHW | fp32 channels-last | bf16-mixed NCHW | bf16-mixed channels-last | `precision: auto` "
        "picks |\n|---|---|---|---|---|---|"
    )
    for name, auto, res in rows:
        m = {k: statistics.median(v) for k, v in res.items()}
        base = m["32-true false"]
        cells = " | ".join(f"{m[f'{p} {cl}']:.0f} ({m[f'{p} {cl}'] / base:.2f}x)" for p, cl in SETTINGS)
        print(f"| {name} | {cells} | {auto} |")


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    main()
