"""precision: auto picks what is fast on the hardware; both answers are tested by faking the hardware."""

import logging
from pathlib import Path

import pytest
import torch
import yaml

from lightning_ssl import precision as P
from lightning_ssl.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def fake_cpu(monkeypatch, amx: bool, avx512_bf16: bool, onednn_bf16: bool = True):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn_bf16)


def test_cpu_with_native_bf16_gets_bf16(monkeypatch):
    fake_cpu(monkeypatch, amx=True, avx512_bf16=True)
    chosen, why = P.auto_precision("auto")
    assert chosen == "bf16-mixed" and "AMX" in why
    fake_cpu(monkeypatch, amx=False, avx512_bf16=True)
    assert P.auto_precision("cpu") == ("bf16-mixed", "this CPU has native bf16 (AVX512-BF16)")


def test_avx2_cpu_gets_fp32(monkeypatch):
    fake_cpu(monkeypatch, amx=False, avx512_bf16=False)
    chosen, why = P.auto_precision("auto")
    assert chosen == "32-true" and "no native bf16" in why and "slower" in why


def test_onednn_limited_to_avx2_counts_as_no_bf16(monkeypatch):
    fake_cpu(monkeypatch, amx=True, avx512_bf16=True, onednn_bf16=False)
    chosen, why = P.auto_precision("cpu")
    assert chosen == "32-true" and "ONEDNN_MAX_CPU_ISA" in why


@pytest.mark.parametrize("bf16, expected", [(True, "bf16-mixed"), (False, "16-mixed")])
def test_cuda_devices(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    assert P.auto_precision("auto")[0] == expected
    assert P.auto_precision("gpu")[0] == expected
    fake_cpu(monkeypatch, amx=False, avx512_bf16=False)  # accelerator=cpu on a GPU machine: the CPU's answer
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert P.auto_precision("cpu")[0] == "32-true"


def test_explicit_precision_always_wins(monkeypatch):
    fake_cpu(monkeypatch, amx=False, avx512_bf16=False)
    assert P.resolve_precision("bf16-mixed")[0] == "bf16-mixed"
    assert P.resolve_precision(32)[0] == 32
    assert P.resolve_precision("auto")[0] == "32-true" and P.resolve_precision(None)[0] == "32-true"


def test_trainer_resolves_auto_and_logs_why(monkeypatch, caplog):
    fake_cpu(monkeypatch, amx=False, avx512_bf16=False)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        t = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    assert t.precision == "32-true"
    assert "lightning-ssl: precision 32-true (this CPU has no native bf16" in caplog.text
    fake_cpu(monkeypatch, amx=True, avx512_bf16=True)
    assert Trainer(accelerator="cpu", logger=False, enable_checkpointing=False).precision == "bf16-mixed"
    t = Trainer(accelerator="cpu", precision="32-true", logger=False, enable_checkpointing=False)
    assert t.precision == "32-true" and t.precision_reason == "precision 32-true (as set)"


def test_cli_takes_auto_and_an_explicit_override(monkeypatch, tmp_path):
    from lightning_ssl.cli import cli

    fake_cpu(monkeypatch, amx=False, avx512_bf16=False)
    args = ["--config", str(ROOT / "configs/simclr/fashion_mnist.yaml"), "--data=SyntheticDataModule",
            "--data.image_size=28", "--data.channels=1", "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"]
    assert cli(args, run=False).trainer.precision == "32-true"
    assert cli([*args, "--trainer.precision=bf16-mixed"], run=False).trainer.precision == "bf16-mixed"


def test_no_config_hard_codes_bf16():
    for path in (ROOT / "configs").rglob("*.yaml"):
        cfg = yaml.safe_load(path.read_text()) or {}
        value = (cfg.get("trainer") or {}).get("precision", cfg.get("precision", "auto"))
        assert value == "auto", f"{path.relative_to(ROOT)}: precision {value!r}; use auto (chosen for the hardware)"
