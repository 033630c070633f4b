"""A real `lightning-ssl fit` process killed with SIGKILL mid-epoch and restarted with `--ckpt_path last` ends
with exactly the weights of an uninterrupted run; a kill while a checkpoint is being written never leaves the
only checkpoint unreadable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from lightning_ssl.checkpoint import safe_load

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        textwrap.dedent(f"""
        seed_everything: 7
        model:
          class_path: lightning_ssl.methods.BYOL
          init_args:
            backbone: {{class_path: lightning_ssl.modules.backbones.SmallCNN, init_args: {{width: 4}}}}
            proj_hidden_dim: 16
            proj_dim: 8
            pred_hidden_dim: 16
        data:
          class_path: lightning_ssl.data.SyntheticDataModule
          init_args: {{num_samples: 80, batch_size: 8, num_workers: 0, image_size: 16, channels: 1,
                      batch_augment: true, val_bank_size: 16}}
        trainer: {{max_epochs: 3, accelerator: cpu, logger: false, enable_progress_bar: false,
                  enable_model_summary: false, default_root_dir: {tmp_path}}}
        checkpoint: {{every_n_train_steps: 5, save_top_k: -1, filename: "step{{step}}"}}
        """)
    )
    return cfg


def _fit(cfg: Path, ckpt_dir: Path, *extra: str, wait: bool = True) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "lightning_ssl.cli",
        "fit",
        "--config",
        str(cfg),
        f"--checkpoint.dirpath={ckpt_dir}",
        *extra,
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if wait:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
    return proc


def test_sigkill_mid_epoch_then_resume_is_exact(tmp_path):
    cfg = _config(tmp_path)
    # the straight run in its own process too: a test process's earlier tests can leave state (threads, allocator,
    # kernels chosen) that moves bf16 BatchNorm statistics by ~1e-6
    _fit(cfg, tmp_path / "straight")

    proc = _fit(
        cfg,
        tmp_path / "killed",
        "--trainer.callbacks+=tests.helpers.Throttle",
        "--trainer.callbacks.seconds=0.15",
        wait=False,
    )
    deadline = time.time() + 300
    last_path = tmp_path / "killed" / "last.ckpt"
    # wait for last.ckpt of step 15 = batch 5 of epoch 1 (10 batches per epoch); reading it while the run writes
    # is safe because checkpoints are replaced atomically
    while not (last_path.exists() and safe_load(last_path)["global_step"] >= 15):
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline, "no checkpoint at step 15 before the deadline"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    last = safe_load(tmp_path / "killed" / "last.ckpt")
    assert 15 <= last["global_step"] < 30, last["global_step"]  # killed mid-run
    _fit(cfg, tmp_path / "killed", "--ckpt_path=last")

    a = safe_load(tmp_path / "straight" / "last.ckpt")
    b = safe_load(tmp_path / "killed" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 30  # 3 epochs of 10 batches; a checkpoint every 5 steps
    for k, v in a["state_dict"].items():  # online and target networks, BatchNorm statistics, update counter
        torch.testing.assert_close(b["state_dict"][k], v, rtol=0, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


_WRITER = """
import sys, time, torch
from lightning_ssl.checkpoint import AtomicCheckpointIO
path, atomic = sys.argv[1], sys.argv[2] == "atomic"
io = AtomicCheckpointIO()
io.save_checkpoint({"step": 1, "w": torch.ones(10)}, path)
print("first written", flush=True)
big = {"step": 2, "w": torch.ones(150_000_000)}  # 600 MB: takes a while to write
for _ in range(50):
    io.save_checkpoint(big, path) if atomic else torch.save(big, path)
"""


def _kill_while_writing(tmp_path: Path, mode: str) -> Path:
    path = tmp_path / f"{mode}.ckpt"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), mode], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "first written"
    first = path.stat().st_mtime_ns if mode == "atomic" else None
    deadline = time.time() + 120
    while True:  # wait until the big write is under way
        tmps = list(tmp_path.glob(f".{mode}.ckpt.*.tmp"))
        growing = tmps and tmps[0].exists() and tmps[0].stat().st_size > 50_000_000
        if mode != "atomic":
            growing = path.exists() and 50_000_000 < path.stat().st_size < 550_000_000
        if growing or time.time() > deadline:
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if mode == "atomic":
        assert path.stat().st_mtime_ns == first  # untouched by the interrupted write
    return path


def test_kill_during_save_keeps_the_previous_checkpoint(tmp_path):
    path = _kill_while_writing(tmp_path, "atomic")
    ckpt = safe_load(path)
    assert ckpt["step"] == 1
    assert torch.equal(ckpt["w"], torch.ones(10))


def test_plain_save_killed_midway_is_truncated(tmp_path):
    """The control: without the atomic rename the same kill leaves an unreadable file."""
    import pytest

    from lightning_ssl.checkpoint import CheckpointError

    path = _kill_while_writing(tmp_path, "plain")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        safe_load(path)
