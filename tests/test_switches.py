"""The speed and scale switches users expect, each set from YAML and run on CPU."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lightning_ssl.checkpoint import safe_load
from lightning_ssl.cli import cli

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / "configs" / "shared"


def tiny(tmp_path: Path, method: str = "SimCLR") -> Path:
    extra = "pred_hidden_dim: 16" if method == "BYOL" else ""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        textwrap.dedent(f"""
        seed_everything: 0
        model:
          class_path: lightning_ssl.methods.{method}
          init_args:
            backbone: {{class_path: lightning_ssl.modules.backbones.SmallCNN, init_args: {{width: 4}}}}
            proj_hidden_dim: 16
            proj_dim: 8
            {extra}
        data:
          class_path: lightning_ssl.data.SyntheticDataModule
          init_args: {{num_samples: 32, batch_size: 8, num_workers: 0, image_size: 16, channels: 1,
                      batch_augment: true, val_bank_size: 8}}
        trainer: {{max_epochs: 1, accelerator: cpu, logger: false, enable_progress_bar: false,
                  enable_model_summary: false, default_root_dir: {tmp_path}}}
        checkpoint: {{dirpath: {tmp_path}/ckpt}}
        """)
    )
    return cfg


def run(cfg: Path, *args: str):
    return cli(["fit", "--config", str(cfg), *args])


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "32-true"])
def test_precision(tmp_path, precision):
    c = run(tiny(tmp_path), f"--trainer.precision={precision}")
    # fp16 autocast is GPU-only in Lightning: on a CPU it runs 16-mixed as bf16-mixed (and says so)
    expected = "bf16-mixed" if precision == "16-mixed" else precision
    assert c.trainer.precision == expected
    assert torch.isfinite(c.trainer.callback_metrics["train/loss"])


@pytest.mark.parametrize("setting", ["true", "auto", "false"])
def test_channels_last(tmp_path, setting):
    """`auto` (the default) is channels-last for a CNN backbone, as `true`; `false` keeps NCHW."""
    args = () if setting == "auto" else (f"--performance.channels_last={setting}",)
    c = run(tiny(tmp_path), *args)
    conv = c.model.backbone.features[3].weight  # (4, 4, 3, 3): NHWC differs from NCHW here
    nhwc = setting != "false"
    assert conv.is_contiguous(memory_format=torch.channels_last) == nhwc
    assert conv.is_contiguous() != nhwc
    assert c.trainer.global_step == 4


def test_channels_last_auto_leaves_a_vit_alone():
    from lightning_ssl.callbacks.performance import Performance, is_convolutional
    from lightning_ssl.methods import MAE
    from lightning_ssl.modules.backbones import SmallCNN
    from lightning_ssl.modules.vit import ViT

    model = MAE(
        ViT(in_channels=1, image_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2),
        decoder_dim=8,
        decoder_depth=1,
        decoder_heads=2,
    )
    perf = Performance()
    perf.setup(None, model, "fit")
    patch = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)).weight
    assert perf.uses_channels_last is False
    assert patch.is_contiguous()
    assert is_convolutional(SmallCNN(1, 16, width=4))
    assert not is_convolutional(model.backbone)
    with pytest.raises(ValueError, match="true, false or auto"):
        Performance(channels_last="yes")


def test_speed_yaml_with_compile(tmp_path):
    """configs/shared/speed.yaml: channels_last + torch.compile; checkpoints keep plain parameter names. The eager
    backend traces the model like inductor without generating kernels (40 s of C++ compilation on a CPU)."""
    c = run(tiny(tmp_path), "--config", str(SHARED / "speed.yaml"), "--performance.compile_backend=eager")
    assert c.trainer.global_step == 4
    assert getattr(c.model.backbone, "_compiled_call_impl", None) is not None
    keys = safe_load(tmp_path / "ckpt" / "last.ckpt")["state_dict"].keys()
    assert "backbone.features.0.weight" in keys
    assert not any("_orig_mod" in k for k in keys)


def test_gradient_accumulation(tmp_path):
    c = run(tiny(tmp_path, "BYOL"), "--trainer.accumulate_grad_batches=2")
    assert c.trainer.global_step == 2
    assert int(c.model.teacher_updates) == 2


def _subprocess_fit(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lightning_ssl.cli", "fit", "--config", str(cfg), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_ddp_with_sync_batchnorm_on_cpu(tmp_path):
    """configs/shared/ddp_syncbn.yaml on 2 CPU processes: BatchNorm synchronized over gloo."""
    out = _subprocess_fit(
        tiny(tmp_path), "--config", str(SHARED / "ddp_syncbn.yaml"), "--trainer.devices=2", "--trainer.accelerator=cpu"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ckpt = safe_load(tmp_path / "ckpt" / "last.ckpt")
    assert ckpt["global_step"] == 2  # 32 images / (8 per process x 2 processes)
    assert "backbone.features.1.running_mean" in ckpt["state_dict"]  # saved as a plain BatchNorm again


def test_fsdp_yaml_is_refused_clearly_on_cpu(tmp_path):
    with pytest.raises(Exception, match="requires a GPU accelerator"):
        run(
            tiny(tmp_path),
            "--config",
            str(SHARED / "fsdp.yaml"),
            "--trainer.accelerator=cpu",
            "--trainer.precision=32-true",
        )
