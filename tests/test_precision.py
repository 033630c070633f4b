"""precision: auto picks what is fast on the hardware; both answers are tested by faking the hardware."""

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

from lightning_ssl import precision as P
from lightning_ssl.callbacks.performance import Performance
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
    ("fp32_s", "bf16_s", "expected"),
    [(0.10, 0.05, "bf16-mixed"), (0.05, 0.10, "32-true"), (0.10, 0.095, "32-true"), (0.10, 0.089, "bf16-mixed")],
)  # bf16 must be at least 10% faster, else fp32
def test_measured_cpu_precision_keeps_bf16_only_past_the_margin(monkeypatch, tmp_path, fp32_s, bf16_s, expected):
    from lightning_ssl.modules.backbones import SmallCNN

    monkeypatch.setenv("LIGHTNING_SSL_CACHE", str(tmp_path))
    monkeypatch.setattr(P, "_pass_seconds", lambda net, x, bf16: bf16_s if bf16 else fp32_s)
    chosen, why = P.measure_cpu_precision(SmallCNN(1, 16, width=4), 1, 16, batch_size=4)
    assert chosen == expected
    assert f"median of 5: fp32 {1000 * fp32_s:.0f} ms, bf16 {1000 * bf16_s:.0f} ms" in why
    assert "at least 10% faster" in why


def test_the_measurement_is_a_median_of_interleaved_passes(monkeypatch, tmp_path):
    """A pass slowed by a passing load (one 5 s fp32 pass, two 5 s bf16 passes) does not decide: the medians do.
    The passes alternate fp32/bf16 so a load that comes or goes weighs on both."""
    from lightning_ssl.modules.backbones import SmallCNN

    monkeypatch.setenv("LIGHTNING_SSL_CACHE", str(tmp_path))
    order, slow = [], {2: 5.0, 5: 5.0, 8: 5.0}  # call index -> seconds

    def fake(net, x, bf16):
        order.append(bf16)
        return slow.get(len(order) - 1, 0.05 if bf16 else 0.10)

    monkeypatch.setattr(P, "_pass_seconds", fake)
    chosen, why = P.measure_cpu_precision(SmallCNN(1, 16, width=4), 1, 16, batch_size=4, repeats=5)
    assert chosen == "bf16-mixed"
    assert "fp32 100 ms, bf16 50 ms" in why
    assert order == [False, True, True, False] * 3  # the first pair (kernel selection) is not counted


def test_the_timed_batch_comes_from_the_flops_not_from_a_timing(monkeypatch):
    from lightning_ssl.modules.backbones import SmallCNN

    monkeypatch.setattr(P.time, "perf_counter", lambda: pytest.fail("no timing"))
    assert P._timing_batch(SmallCNN(1, 28, width=16), 1, 28, batch_size=256) == 128  # at most 128
    assert P._timing_batch(SmallCNN(1, 28, width=16), 1, 28, batch_size=60) == 56  # the batch, a multiple of 8
    wide = torch.nn.Sequential(torch.nn.Conv2d(3, 512, 3), torch.nn.Conv2d(512, 512, 3))  # ~470 GFLOP an image
    assert P._timing_batch(wide, 3, 224, batch_size=128) == 8


def test_measured_cpu_precision_times_a_copy_for_real_and_remembers(monkeypatch, tmp_path):
    from lightning_ssl.modules.backbones import SmallCNN

    monkeypatch.setenv("LIGHTNING_SSL_CACHE", str(tmp_path))
    net = SmallCNN(1, 16, width=4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    chosen, why = P.measure_cpu_precision(net, 1, 16, batch_size=4, channels_last=True, repeats=2)
    assert chosen in ("bf16-mixed", "32-true")
    assert "SmallCNN forward+backward at batch 8, median of 2" in why
    assert "measured now" in why
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # BN statistics untouched
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(torch.get_rng_state(), rng)  # the run's random numbers are not consumed
    # the same model again: the remembered answer and its figures, no timing (a second run chooses the same)
    monkeypatch.setattr(P, "_pass_seconds", lambda *a: pytest.fail("timed again"))
    again, why_again = P.measure_cpu_precision(SmallCNN(1, 16, width=4), 1, 16, batch_size=4, channels_last=True)
    assert again == chosen
    assert why_again.split(" (")[0] == why.split(" (")[0]
    assert f"cached in {tmp_path / 'precision.json'}" in why_again
    # the key names the software and the hardware: another torch version or CPU measures again
    (key,) = json.loads((tmp_path / "precision.json").read_text())["entries"]
    assert f"torch {torch.__version__}" in key
    assert P.cpu_model() in key
    assert "SmallCNN#" in key
    # on demand: measured again, and the new answer replaces the old one
    monkeypatch.setenv(P.REMEASURE, "1")
    monkeypatch.setattr(P, "_pass_seconds", lambda net, x, bf16: 0.01 if bf16 else 0.1)
    assert P.measure_cpu_precision(SmallCNN(1, 16, width=4), 1, 16, batch_size=4, channels_last=True)[0] == "bf16-mixed"
    monkeypatch.delenv(P.REMEASURE)
    monkeypatch.setattr(P, "_pass_seconds", lambda *a: pytest.fail("timed again"))
    assert P.measure_cpu_precision(SmallCNN(1, 16, width=4), 1, 16, batch_size=4, channels_last=True)[0] == "bf16-mixed"


CLI_ARGS = [
    "--config",
    str(ROOT / "configs/simclr/fashion_mnist.yaml"),
    "--data=SyntheticDataModule",
    "--data.image_size=28",
    "--data.channels=1",
    "--trainer.logger=false",
]


def test_cli_and_python_measure_the_backbone_alike(monkeypatch, tmp_path):
    """One CPU process with native bf16: the Trainer times the backbone when fit starts, whether the CLI built it
    or Python did, with the same arguments (the CNN channels-last, as it will train)."""
    import lightning_ssl.cli as C
    import lightning_ssl.trainer as T

    calls = []

    def fake_measure(backbone, channels, size, batch, channels_last=False):
        calls.append((type(backbone).__name__, channels, size, batch, channels_last))
        return "32-true", "measured (fake)"

    fake_cpu(monkeypatch, amx=True, avx512_bf16=True)
    monkeypatch.setattr(T, "measure_cpu_precision", fake_measure)
    args = [*CLI_ARGS, f"--trainer.default_root_dir={tmp_path}"]
    c = C.cli(args, run=False)
    assert c.trainer.measure_precision
    chosen = c.trainer.fit_precision(c.model, c.datamodule)
    assert (chosen, chosen.why) == ("32-true", "measured (fake)")
    # a Trainer built in Python, with the callback that sets the layout, decides the same way
    python = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, callbacks=[Performance()])
    assert python.measure_precision
    assert python.fit_precision(c.model, c.datamodule) == "32-true"
    assert calls == [("SmallCNN", 1, 28, 128, True)] * 2
    for extra in (["--trainer.precision=bf16-mixed"], ["--trainer.devices=2", "--trainer.strategy=ddp"]):
        assert not C.cli([*args, *extra], run=False).trainer.measure_precision  # explicit, or several processes
    fake_cpu(monkeypatch, amx=False, avx512_bf16=False)
    assert not C.cli(args, run=False).trainer.measure_precision
    assert len(calls) == 2


def test_python_fit_measures_and_uses_the_answer(monkeypatch, tmp_path):
    """A Trainer built in Python with the default precision trains in what the measurement chose, said in one line;
    its threads plus the loader workers stay within the usable CPUs."""
    import lightning_ssl.trainer as T
    from lightning_ssl.data import SimCLRViews, SyntheticDataModule
    from lightning_ssl.methods import SimCLR
    from lightning_ssl.modules.backbones import SmallCNN

    fake_cpu(monkeypatch, amx=True, avx512_bf16=True)
    monkeypatch.setattr(T, "measure_cpu_precision", lambda *a, **k: ("32-true", "measured (fake)"))
    monkeypatch.setattr(P, "usable_cpus", lambda: (2, "affinity 2"))
    monkeypatch.setattr(T, "usable_cpus", lambda: (2, "affinity 2"))
    threads = torch.get_num_threads()
    dm = SyntheticDataModule(
        num_samples=16, image_size=16, channels=1, batch_size=8, num_workers=3, views=SimCLRViews(blur_prob=0)
    )
    model = SimCLR(SmallCNN(1, 16, width=4), proj_hidden_dim=16, proj_dim=8)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        enable_model_summary=False,
    )
    assert trainer.precision == "bf16-mixed"  # the hardware's rule until fit measures
    try:
        trainer.fit(model, dm)
        assert torch.get_num_threads() == 1  # 2 CPUs: 1 loader worker + 1 thread
    finally:
        torch.set_num_threads(threads)
    assert trainer.precision == "32-true"
    assert trainer.precision_reason == "precision 32-true (measured (fake))"
    assert dm.num_workers == 1  # 3 workers on 2 CPUs: one is left to the training process


def test_threads_stay_within_the_usable_cpus(monkeypatch, tmp_path):
    threads = torch.get_num_threads()
    monkeypatch.setattr(P.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    try:
        monkeypatch.setattr(P, "_cgroup_cpu_quota", lambda: 1.5)  # a container given 1.5 CPUs
        assert P.usable_cpus() == (1, "affinity 4, cgroup quota 1.5")
        torch.set_num_threads(4)
        assert P.limit_threads(0).startswith("1 intra-op threads + 0 loader workers on 1 usable CPUs")
        assert torch.get_num_threads() == 1
        monkeypatch.setattr(P, "_cgroup_cpu_quota", lambda: None)
        torch.set_num_threads(4)
        P.limit_threads(workers=2)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(4)
        P.limit_threads(workers=0, processes=2)  # two DDP ranks on the machine
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        P.limit_threads(0)
        assert torch.get_num_threads() == 1  # never raised
    finally:
        torch.set_num_threads(threads)


def test_cgroup_quotas_are_read_v1_and_v2(tmp_path):
    proc = tmp_path / "cgroup"
    (tmp_path / "fs/user.slice/job").mkdir(parents=True)
    (tmp_path / "fs/user.slice/cpu.max").write_text("150000 100000\n")  # the parent's limit is the tighter
    (tmp_path / "fs/user.slice/job/cpu.max").write_text("max 100000\n")
    proc.write_text("0::/user.slice/job\n")
    assert P._cgroup_cpu_quota(tmp_path / "fs", proc) == 1.5
    (tmp_path / "v1/cpu,cpuacct/docker").mkdir(parents=True)
    (tmp_path / "v1/cpu,cpuacct/docker/cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "v1/cpu,cpuacct/docker/cpu.cfs_period_us").write_text("100000\n")
    proc.write_text("4:memory:/docker\n3:cpu,cpuacct:/docker\n")
    assert P._cgroup_cpu_quota(tmp_path / "v1", proc) == 3.0
    (tmp_path / "v1/cpu,cpuacct/docker/cpu.cfs_quota_us").write_text("-1\n")
    assert P._cgroup_cpu_quota(tmp_path / "v1", proc) is None


def test_cli_falls_back_to_the_hardware_rule_when_timing_fails(monkeypatch, tmp_path):
    import lightning_ssl.cli as C
    import lightning_ssl.trainer as T

    def broken(*args, **kwargs):
        raise RuntimeError("needs real data")

    fake_cpu(monkeypatch, amx=True, avx512_bf16=True)
    monkeypatch.setattr(T, "measure_cpu_precision", broken)
    c = C.cli([*CLI_ARGS, f"--trainer.default_root_dir={tmp_path}"], run=False)
    chosen = c.trainer.fit_precision(c.model, c.datamodule)
    assert chosen == "bf16-mixed"
    assert "timing the backbone failed (RuntimeError: needs real data)" in chosen.why


def test_a_resumed_run_keeps_the_precision_it_was_trained_in(monkeypatch, tmp_path):
    """The measured choice is written into each checkpoint: a resume never re-times (noise could flip it)."""
    import lightning_ssl.cli as C
    import lightning_ssl.trainer as T
    from lightning_ssl.checkpoint import safe_load

    fake_cpu(monkeypatch, amx=True, avx512_bf16=True)
    answers = iter([("32-true", "measured (first)"), ("bf16-mixed", "measured (second)")])
    monkeypatch.setattr(T, "measure_cpu_precision", lambda *a, **k: next(answers))
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
    assert C.cli(args).trainer.precision == "32-true"  # measured when fit started
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    assert safe_load(ckpt)["precision"] == "32-true"
    t = C.cli([*args[:-1], "--trainer.max_epochs=2", f"--ckpt_path={ckpt}"]).trainer
    assert t.precision == "32-true"
    assert t.precision_reason == "precision 32-true (as the run being resumed, last.ckpt)"
    assert next(answers) == ("bf16-mixed", "measured (second)")  # the second answer was never asked for
