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
    assert chosen == "bf16-mixed"
    assert "AMX" in why
    fake_cpu(monkeypatch, amx=False, avx512_bf16=True)
    assert P.auto_precision("cpu") == ("bf16-mixed", "this CPU has native bf16 (AVX512-BF16)")


def test_avx2_cpu_gets_fp32(monkeypatch):
    fake_cpu(monkeypatch, amx=False, avx512_bf16=False)
    chosen, why = P.auto_precision("auto")
    assert chosen == "32-true"
    assert "no native bf16" in why
    assert "slower" in why


def test_onednn_limited_to_avx2_counts_as_no_bf16(monkeypatch):
    fake_cpu(monkeypatch, amx=True, avx512_bf16=True, onednn_bf16=False)
    chosen, why = P.auto_precision("cpu")
    assert chosen == "32-true"
    assert "ONEDNN_MAX_CPU_ISA" in why


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "16-mixed")])
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
    assert P.resolve_precision("auto")[0] == "32-true"
    assert P.resolve_precision(None)[0] == "32-true"


def test_trainer_resolves_auto_and_logs_why(monkeypatch, caplog):
    fake_cpu(monkeypatch, amx=False, avx512_bf16=False)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        t = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    assert t.precision == "32-true"
    assert "lightning-ssl: precision 32-true (this CPU has no native bf16" in caplog.text
    fake_cpu(monkeypatch, amx=True, avx512_bf16=True)
    assert Trainer(accelerator="cpu", logger=False, enable_checkpointing=False).precision == "bf16-mixed"
    t = Trainer(accelerator="cpu", precision="32-true", logger=False, enable_checkpointing=False)
    assert t.precision == "32-true"
    assert t.precision_reason == "precision 32-true (as set)"


def test_cli_takes_auto_and_an_explicit_override(monkeypatch, tmp_path):
    from lightning_ssl.cli import cli

    fake_cpu(monkeypatch, amx=False, avx512_bf16=False)
    args = [
        "--config",
        str(ROOT / "configs/simclr/fashion_mnist.yaml"),
        "--data=SyntheticDataModule",
        "--data.image_size=28",
        "--data.channels=1",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    assert cli(args, run=False).trainer.precision == "32-true"
    assert cli([*args, "--trainer.precision=bf16-mixed"], run=False).trainer.precision == "bf16-mixed"


def test_no_config_hard_codes_bf16():
    for path in (ROOT / "configs").rglob("*.yaml"):
        cfg = yaml.safe_load(path.read_text()) or {}
        value = (cfg.get("trainer") or {}).get("precision", cfg.get("precision", "auto"))
        assert value == "auto", f"{path.relative_to(ROOT)}: precision {value!r}; use auto (chosen for the hardware)"


@pytest.mark.parametrize(
    ("fp32_s", "bf16_s", "expected"), [(0.10, 0.05, "bf16-mixed"), (0.05, 0.10, "32-true"), (0.10, 0.097, "32-true")]
)  # within the 5% margin: fp32
def test_measured_cpu_precision_keeps_the_faster(monkeypatch, tmp_path, fp32_s, bf16_s, expected):
    from lightning_ssl.modules.backbones import SmallCNN

    monkeypatch.setenv("LIGHTNING_SSL_CACHE", str(tmp_path))
    monkeypatch.setattr(P, "_step_seconds", lambda net, x, bf16, repeats: bf16_s if bf16 else fp32_s)
    chosen, why = P.measure_cpu_precision(SmallCNN(1, 16, width=4), 1, 16, batch_size=4)
    assert chosen == expected
    assert f"fp32 {1000 * fp32_s:.0f} ms, bf16 {1000 * bf16_s:.0f} ms" in why


def test_measured_cpu_precision_times_a_copy_for_real_and_remembers(monkeypatch, tmp_path):
    from lightning_ssl.modules.backbones import SmallCNN

    monkeypatch.setenv("LIGHTNING_SSL_CACHE", str(tmp_path))
    net = SmallCNN(1, 16, width=4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    chosen, why = P.measure_cpu_precision(net, 1, 16, batch_size=4, channels_last=True)
    assert chosen in ("bf16-mixed", "32-true")
    assert "SmallCNN forward+backward at batch" in why
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # BN statistics untouched
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(torch.get_rng_state(), rng)  # the run's random numbers are not consumed
    # the same model again: the remembered answer, no timing (a second run or a resume chooses the same)
    monkeypatch.setattr(P, "_step_seconds", lambda *a: pytest.fail("timed again"))
    again, why_again = P.measure_cpu_precision(SmallCNN(1, 16, width=4), 1, 16, batch_size=4, channels_last=True)
    assert again == chosen
    assert why_again.startswith(why)
    assert "measured before on this machine" in why_again
    assert P.cache_path() == tmp_path / "precision.json"


def test_cli_measures_the_backbone_on_one_cpu_with_native_bf16(monkeypatch, tmp_path):
    import lightning_ssl.cli as C

    calls = []

    def fake_measure(backbone, channels, size, batch, channels_last=False):
        calls.append((type(backbone).__name__, channels, size, batch, channels_last))
        return "32-true", "measured (fake)"

    fake_cpu(monkeypatch, amx=True, avx512_bf16=True)
    monkeypatch.setattr(C, "measure_cpu_precision", fake_measure)
    args = [
        "--config",
        str(ROOT / "configs/simclr/fashion_mnist.yaml"),
        "--data=SyntheticDataModule",
        "--data.image_size=28",
        "--data.channels=1",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    t = C.cli(args, run=False).trainer
    assert t.precision == "32-true"
    assert t.precision_reason == "precision 32-true (measured (fake))"
    assert calls == [("SmallCNN", 1, 28, 128, True)]  # the CNN is timed channels-last, as it will train
    assert C.cli([*args, "--trainer.precision=bf16-mixed"], run=False).trainer.precision == "bf16-mixed"
    assert C.cli([*args, "--trainer.devices=2", "--trainer.strategy=ddp"], run=False).trainer.precision == "bf16-mixed"
    assert len(calls) == 1  # neither an explicit precision nor a multi-process run is measured
    fake_cpu(monkeypatch, amx=False, avx512_bf16=False)
    assert C.cli(args, run=False).trainer.precision == "32-true"
    assert len(calls) == 1


def test_cli_falls_back_to_the_hardware_rule_when_timing_fails(monkeypatch, tmp_path):
    import lightning_ssl.cli as C

    def broken(*args, **kwargs):
        raise RuntimeError("needs real data")

    fake_cpu(monkeypatch, amx=True, avx512_bf16=True)
    monkeypatch.setattr(C, "measure_cpu_precision", broken)
    args = [
        "--config",
        str(ROOT / "configs/simclr/fashion_mnist.yaml"),
        "--data=SyntheticDataModule",
        "--data.image_size=28",
        "--data.channels=1",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    t = C.cli(args, run=False).trainer
    assert t.precision == "bf16-mixed"
    assert "timing the backbone failed (RuntimeError: needs real data)" in t.precision_reason


def test_a_resumed_run_keeps_the_precision_it_was_trained_in(monkeypatch, tmp_path):
    """The measured choice is written into each checkpoint: a resume never re-times (noise could flip it)."""
    import lightning_ssl.cli as C
    from lightning_ssl.checkpoint import safe_load

    fake_cpu(monkeypatch, amx=True, avx512_bf16=True)
    answers = iter([("32-true", "measured (first)"), ("bf16-mixed", "measured (second)")])
    monkeypatch.setattr(C, "measure_cpu_precision", lambda *a, **k: next(answers))
    args = [
        "fit",
        "--config",
        str(ROOT / "configs/simclr/fashion_mnist.yaml"),
        "--data=SyntheticDataModule",
        "--data.image_size=16",
        "--data.channels=1",
        "--data.num_samples=16",
        "--data.batch_size=8",
        "--data.val_bank_size=8",
        "--trainer.max_epochs=1",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
        f"--checkpoint.dirpath={tmp_path}/ckpt",
        "--knn.every_n_epochs=0",
    ]
    C.cli(args)
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    assert safe_load(ckpt)["precision"] == "32-true"
    t = C.cli([*args[:-1], "--trainer.max_epochs=2", f"--ckpt_path={ckpt}"]).trainer
    assert t.precision == "32-true"
    assert t.precision_reason == "precision 32-true (as the run being resumed, last.ckpt)"
    assert next(answers) == ("bf16-mixed", "measured (second)")  # the second answer was never asked for
