"""The console entry points: quick and light help and config listing, each eval subcommand's own help, and a
short message (what is wrong, what to do, "did you mean") instead of a traceback for every mistake."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lightning_ssl.cli import cli
from lightning_ssl.console import PACKAGED_CONFIGS, UsageError, config_header, eval_main, main, summary
from lightning_ssl.eval.cli import OPTIONS, PROTOCOLS, build_parser

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "lightning", "jsonargparse", "numpy", "transformers", "timm")


def imported_modules(*args: str) -> tuple[set[str], str]:
    """(top-level packages imported by ``lightning-ssl *args`` under ``python -X importtime``, its stdout)."""
    code = f"import sys; from lightning_ssl.console import main; sys.exit(main({list(args)!r}))"
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split("|") for line in out.stderr.splitlines() if line.startswith("import time:")][1:]
    own = next(int(r[1]) for r in rows if r[2].strip() == "lightning_ssl.console")
    print(f"lightning-ssl {' '.join(args)}: lightning_ssl.console imports in {own / 1e6:.3f} s (cumulative)")
    return {r[2].strip().split(".")[0] for r in rows}, out.stdout


@pytest.mark.parametrize("args", [["--help"], ["configs"], ["configs", "simclr"]])
def test_help_and_configs_import_neither_torch_nor_lightning(args):
    modules, stdout = imported_modules(*args)
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))
    assert "lightning_ssl" in modules
    assert stdout.strip()


def test_top_level_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("fit", "validate", "test", "predict", "configs", "--debug", "lightning-ssl-eval"):
        assert name in out


def test_configs_filter_shows_the_matching_configs_in_full(capsys):
    assert main(["configs", "simclr"]) == 0
    out = capsys.readouterr().out
    names = re.findall(r"^\w+/\w+$", out, re.M)
    expected = sorted(p.stem for p in (PACKAGED_CONFIGS / "simclr").glob("*.yaml"))
    assert names == [f"simclr/{n}" for n in expected]
    for name in expected:  # every line of every description, none cut off
        for line in config_header(PACKAGED_CONFIGS / "simclr" / f"{name}.yaml"):
            assert line in out
    sentence = summary(config_header(PACKAGED_CONFIGS / "simclr" / "cifar10.yaml"))
    assert sentence.endswith('grayscale 0.2, blur 0.5 ("symmetric").')  # not at "et al.", not the aside
    assert main(["configs"]) == 0  # unfiltered: one line per config, its first sentence cut to the terminal
    listing = capsys.readouterr().out
    assert len([line for line in listing.splitlines() if line.startswith("simclr/")]) == len(expected)
    first = next(line for line in listing.splitlines() if line.startswith("simclr/cifar10 "))
    assert sentence.startswith(first.split(None, 1)[1].removesuffix(" ..."))


def help_text(capsys, name: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        eval_main([name, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def own_options(name: str) -> dict[str, str]:
    """{flag: help} of the option groups a subcommand shows."""
    found: dict[str, str] = {}
    for group in PROTOCOLS[name].options:
        OPTIONS[group](lambda flag, **kw: found.setdefault(flag, kw["help"]))
    return found


@pytest.mark.parametrize("name", [*PROTOCOLS, "export"])
def test_each_eval_subcommand_help_shows_only_its_options_with_descriptions(capsys, name):
    text = help_text(capsys, name)
    lines = text.splitlines()
    print(f"lightning-ssl-eval {name} --help: {len(lines)} lines")
    assert len(lines) <= 150
    assert "known subclasses" not in text
    if name == "export":
        for flag in ("--ckpt", "--out", "--format", "--weights", "--mean", "--std"):
            assert flag in text
        assert "onnx" in text
        return
    flags = set(re.findall(r"^\s+(--\w+)", text, re.M))
    mine = own_options(name)
    others = {f for n in PROTOCOLS for f in own_options(n)} - set(mine)
    assert set(mine) <= flags
    assert not others & flags, sorted(others & flags)
    flat = "".join(text.split())  # help is wrapped (at spaces and hyphens)
    for help_ in mine.values():  # each option with its description
        assert "".join(help_.split()) in flat


def test_one_config_file_serves_every_subcommand():
    config = yaml.safe_load((ROOT / "configs" / "eval" / "fashion_mnist.yaml").read_text())
    assert {"k", "shots", "epochs"} <= set(config)  # options of three protocols in one file
    for name in PROTOCOLS:
        cfg = build_parser(name).parse_args([name, "--config", "configs/eval/fashion_mnist.yaml"])
        assert cfg[name].k == config["k"]


# -- errors: one table, each a short message and exit status 2 --------------------------------------------------
def tiny(tmp_path: Path) -> list[str]:
    return [
        "--model=SimCLR",
        "--model.backbone=SmallCNN",
        "--model.backbone.width=4",
        "--model.proj_hidden_dim=16",
        "--model.proj_dim=8",
        "--data=SyntheticDataModule",
        "--data.num_samples=16",
        "--data.batch_size=8",
        "--data.num_workers=0",
        "--data.image_size=16",
        "--data.channels=1",
        "--trainer.max_steps=1",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.precision=32-true",
        "--knn.every_n_epochs=0",
        f"--trainer.default_root_dir={tmp_path}/runs",
    ]


EVAL_DATA = ["--data=SyntheticDataModule", "--data.num_samples=16", "--data.image_size=8", "--data.channels=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished one-step run (SmallCNN) and a run root whose only run was trained with another model config."""
    tmp = tmp_path_factory.mktemp("console")
    c = cli(["fit", *tiny(tmp)])
    other = tmp / "other" / "version_0"
    (other / "checkpoints").mkdir(parents=True)
    (other / "checkpoints" / "last.ckpt").write_bytes(b"x")
    config = {"model": {"class_path": "lightning_ssl.methods.SimCLR", "init_args": {"temperature": 0.9}}}
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp / "empty").mkdir()
    return {"tmp": tmp, "ckpt": str(Path(c.trainer.checkpoint_callback.dirpath) / "last.ckpt")}


ERRORS = {  # name: (command, arguments (formatted with the run fixture's values), what the message says)
    "subcommand": (main, ["fitt"], "did you mean 'fit'"),
    "config name": (main, ["fit", "--config", "simclr/fashon_mnist"], "did you mean 'simclr/fashion_mnist'"),
    "config path": (main, ["fit", "--config", "configs/simclr/fashon_mnist.yaml"], "did you mean 'simclr/fashion"),
    "configs filter": (main, ["configs", "simcrl"], "did you mean"),
    "class name": (main, ["fit", "{tiny}", "--model=SimCRL"], "did you mean 'SimCLR'"),
    "option": (main, ["fit", "{tiny}", "--trainer.max_epochz=2"], "did you mean --trainer.max_epochs"),
    "model argument": (main, ["fit", "{tiny}", "--model.temprature=0.5"], "did you mean --model.temperature"),
    "impossible value": (main, ["fit", "{tiny}", "--model.temperature=0"], "temperature must be > 0"),
    "resume file": (main, ["fit", "{tiny}", "--ckpt_path={tmp}/runs/version_9/last.ckpt"], "does not exist"),
    "resume last refused": (
        main,
        ["fit", "{tiny}", "--trainer.default_root_dir={tmp}/other", "--ckpt_path=last"],
        "was trained with this model config",
    ),
    "protocol": (eval_main, ["knnn"], "did you mean 'knn'"),
    "eval checkpoint": (
        eval_main,
        ["knn", "--backbone=CheckpointBackbone", "--backbone.path={tmp}/runs/version_0/chekpoints/x.ckpt", *EVAL_DATA],
        "did you mean '{tmp}/runs/version_0/checkpoints'",
    ),
    "eval data argument": (
        eval_main,
        ["knn", "--backbone=Pixels", *EVAL_DATA, "--data.batch_sise=4"],
        "--data.batch_size",
    ),
    "export format": (eval_main, ["export", "--ckpt={ckpt}", "--out={tmp}/x", "--format=onnxx"], "did you mean 'onnx'"),
    "export format does not apply": (
        eval_main,
        ["export", "--ckpt={ckpt}", "--out={tmp}/x", "--format=timm"],
        "SmallCNN has no timm equivalent",
    ),
    "export path": (eval_main, ["export", "--ckpt={tmp}/runs/version_1", "--out={tmp}/x"], "did you mean"),
    "export folder without checkpoint": (
        eval_main,
        ["export", "--ckpt={tmp}/empty", "--out={tmp}/x"],
        "holds no checkpoint",
    ),
}


def fill(args: list[str], run: dict) -> list[str]:
    out: list[str] = []
    for a in args:
        out += tiny(run["tmp"]) if a == "{tiny}" else [a.format(**run)]
    return out


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_every_mistake_is_a_short_message_without_traceback(case, run, capsys, monkeypatch):
    monkeypatch.delenv("LIGHTNING_SSL_DEBUG", raising=False)
    command, args, expected = ERRORS[case]
    with pytest.raises(SystemExit) as exit_:
        command(fill(args, run))
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    err = captured.err[captured.err.index(": error: ") :].strip()  # what the CLI printed (not Lightning's log)
    lines = err.splitlines()
    assert len(lines) <= 5, err
    assert expected.format(**run) in err, err
    assert "--debug" in lines[-1]


def test_debug_shows_the_traceback(monkeypatch):
    with pytest.raises(UsageError, match="did you mean 'fit'"):
        main(["fitt", "--debug"])
    monkeypatch.setenv("LIGHTNING_SSL_DEBUG", "1")
    with pytest.raises(UsageError, match="did you mean 'knn'"):
        eval_main(["knnn"])


def test_console_scripts_exit_non_zero_with_a_short_message():
    for module, args in (("lightning_ssl.console", ["fitt"]), ("lightning_ssl.eval.cli", ["knnn"])):
        out = subprocess.run(
            [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300, cwd=ROOT
        )
        assert out.returncode == 2
        assert "Traceback" not in out.stderr
        error = out.stderr[out.stderr.index(": error: ") :].strip().splitlines()
        assert len(error) == 2, out.stderr
        assert "did you mean" in error[0]


def test_a_bug_keeps_its_traceback(monkeypatch):
    import lightning_ssl.cli

    def broken(*args, **kwargs):
        raise RuntimeError("a bug, not a mistake on the command line")

    monkeypatch.setattr(lightning_ssl.cli, "cli", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["fit", "--config", "simclr/fashion_mnist"])
