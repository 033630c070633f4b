"""Run directories: every ``lightning-ssl fit`` gets its own, so runs never overwrite each other.

A config names a root (``trainer.default_root_dir``, e.g. ``outputs/simclr_fashion_mnist``); each run writes to
``<root>/version_<N>/`` (N = one more than the highest so far, as Lightning's loggers number versions): its
``config.yaml``, ``checkpoints/``, logs (``metrics.csv``, ``wandb/``) and pictures (``images/``).

``--ckpt_path last`` resumes the newest run under the root *whose model config is this run's* and continues
writing into that run's directory; a variant run started from the same config (another width, say) is never
picked up by mistake, and when no run matches the error names the difference.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

import yaml

PREFIX = "version_"


def log_dir(trainer: Any) -> Path:
    """The run's folder as ``trainer.log_dir`` gives it, without its broadcast: ``trainer.log_dir`` is a collective,
    so a callback that writes on rank 0 only and called it would leave the other processes waiting for a
    different collective (gloo: "Received data size doesn't match expected size")."""
    if trainer.loggers:
        logger = trainer.loggers[0]
        from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

        folder = logger.log_dir if isinstance(logger, (CSVLogger, TensorBoardLogger)) else logger.save_dir
        if folder:
            return Path(folder)
    return Path(trainer.default_root_dir)


def versions(root: str | Path) -> list[Path]:
    """The run directories under ``root``, oldest first."""
    root = Path(root)
    found = [(int(p.name[len(PREFIX) :]), p) for p in root.glob(f"{PREFIX}*") if p.name[len(PREFIX) :].isdigit()]
    return [p for _, p in sorted(found)]


def new_run_dir(root: str | Path) -> Path:
    """``<root>/version_<N+1>`` (created, so a second run started at the same moment takes the next number)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    n = int(versions(root)[-1].name[len(PREFIX) :]) + 1 if versions(root) else 0
    while True:
        path = root / f"{PREFIX}{n}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


def last_checkpoint(run_dir: str | Path) -> Path | None:
    path = Path(run_dir) / "checkpoints" / "last.ckpt"
    return path if path.exists() else None


def latest_checkpoint(root: str | Path) -> Path:
    """``last.ckpt`` of the newest run under ``root`` that has one (for reports and evaluation)."""
    for run in reversed(versions(root)):
        if (ckpt := last_checkpoint(run)) is not None:
            return ckpt
    raise FileNotFoundError(f"no run under {root} has a checkpoints/last.ckpt yet")


def _plain(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def diff(a: Any, b: Any, prefix: str = "model", here: str = "here", there: str = "in the run") -> list[str]:
    """``["model.init_args.x: 1 here, 2 in the run", ...]`` for every leaf where two configs differ."""
    a, b = _plain(a), _plain(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in diff(a.get(k), b.get(k), f"{prefix}.{k}", here, there)]
    return [] if a == b else [f"{prefix}: {a!r} {here}, {b!r} {there}"]


def find_resumable(root: str | Path, model_config: dict[str, Any]) -> tuple[Path | None, list[str]]:
    """The newest run under ``root`` with a last checkpoint and the same model config, and, when there is none,
    how this config differs from the newest resumable run (empty if there is no run at all)."""
    model_config = _plain(model_config)
    newest_diff: list[str] = []
    for run in reversed(versions(root)):
        if last_checkpoint(run) is None or not (run / "config.yaml").exists():
            continue
        saved = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("model")
        changes = diff(model_config, saved)
        if not changes:
            return run, []
        newest_diff = newest_diff or [f"{run.name}: " + "; ".join(changes[:4])]
    return None, newest_diff


def resolve_checkpoint(path: str | Path) -> str:
    """A checkpoint named by a file, a run directory (its ``checkpoints/last.ckpt``) or a config's root (the newest
    run's), so configs can point at another config's output (BEiT's tokenizer, a VQ-KD teacher) by its root."""
    p = Path(path)
    if p.is_dir():
        if (ckpt := last_checkpoint(p)) is not None:
            return str(ckpt)
        if versions(p):
            return str(latest_checkpoint(p))
        raise FileNotFoundError(f"{p} holds no checkpoint: neither checkpoints/last.ckpt nor version_*/ runs")
    if not p.exists() and p.parent.name == "checkpoints" and not p.parent.exists() and versions(p.parent.parent):
        return str(latest_checkpoint(p.parent.parent))  # an old-style <root>/checkpoints/last.ckpt path
    return str(path)


def logged_step(trainer: Any) -> int:
    """The step under which Lightning's loggers record what happens now (``trainer/global_step`` in W&B): the 0-based
    index of the last optimizer step, as the training metrics, the learning-rate monitor and the validation results
    use. Pictures and monitors logged by hand use it too, so every panel shares one x-axis."""
    return max(0, int(trainer.global_step) - 1)


def logged_epoch(trainer: Any) -> int:
    """The epoch of the last optimizer step, as Lightning's ``epoch`` column counts it (0-based): unlike
    ``trainer.current_epoch``, not one more once training has ended."""
    started = trainer.fit_loop.epoch_progress.current.started
    return max(0, started - 1) if started else int(trainer.current_epoch)


def fit_summary(trainer: Any, eval_config: str | None = None) -> str:
    """What a finished fit leaves and what to run next: the run folder, the best and last checkpoints, and the
    ``lightning-ssl-eval`` command for the last one (given a config the evaluation CLI takes: the run's own
    ``config.yaml``; none for data without labels). Reads attributes only, no collective: any rank may call it.

    Args:
        trainer: the Trainer that fitted.
        eval_config: the training config to evaluate with (``lightning-ssl-eval --config``), or None.

    Returns:
        A few lines of text.
    """
    lines = [f"run folder:      {log_dir(trainer)}"]
    callback = getattr(trainer, "checkpoint_callback", None)
    best, last = getattr(callback, "best_model_path", ""), getattr(callback, "last_model_path", "")
    if best:
        score, monitor = getattr(callback, "best_model_score", None), getattr(callback, "monitor", None)
        monitored = f" ({monitor} = {float(score):.4g})" if monitor and score is not None else ""
        lines.append(f"best checkpoint: {best}{monitored}")
    if last:
        lines.append(f"last checkpoint: {last}")
    ckpt = last or best
    if ckpt and eval_config:
        lines.append(
            f"evaluate it:     lightning-ssl-eval knn --config {eval_config} --backbone.path {ckpt}"
            f"   (or linear, fewshot, plot, all)"
        )
    return "\n".join(lines)


def missing_path_hint(path: str | os.PathLike) -> str:
    """For a path that does not exist: the closest names in the deepest folder of it that does ("did you
    mean"), or what that folder holds."""
    p = Path(path)
    parent = p.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return ""
    missing = p.relative_to(parent).parts[0] if p.is_relative_to(parent) and p != parent else p.name
    names = sorted(c.name for c in parent.iterdir())
    close = difflib.get_close_matches(missing, names, n=2, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(repr(str(parent / c)) for c in close) + "?"
    where = str(parent) if str(parent) != "." else "this folder"
    return f"{where} holds: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}" if names else ""
