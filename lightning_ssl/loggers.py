"""Loggers: Weights & Biases that works without network access by default, and a CSV logger that appends."""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers import WandbLogger as _WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter as _ExperimentWriter


class WandbLogger(_WandbLogger):
    """Lightning's ``WandbLogger``, offline unless asked otherwise.

    ``offline=None`` (default) means offline unless the environment says ``WANDB_MODE=online`` (or
    ``LIGHTNING_SSL_WANDB=online``). Offline runs are written under ``save_dir/wandb`` and can be uploaded
    later with ``wandb sync``.

    Args:
        project: W&B project name.
        save_dir: Folder the offline run files are written under (``save_dir/wandb``).
        offline: True / False, or None: offline unless ``WANDB_MODE=online`` (or ``LIGHTNING_SSL_WANDB=online``).
        log_model: Upload checkpoints as W&B artifacts (True, ``"all"``) or not (False).
        name: Run name; None: ``<root>/version_N`` from the run directory.
        tags: Run tags; None: the method and the dataset.
        **kwargs: Passed to Lightning's ``WandbLogger`` / ``wandb.init``.
    """

    def __init__(
        self,
        project: str = "lightning-ssl",
        save_dir: str = "outputs",
        offline: bool | None = None,
        log_model: bool | Literal["all"] = False,
        name: str | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if offline is None:
            mode = os.environ.get("LIGHTNING_SSL_WANDB", os.environ.get("WANDB_MODE", "offline"))
            offline = mode != "online"
        os.makedirs(save_dir, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")
        if tags:
            kwargs["tags"] = list(tags)
        super().__init__(project=project, save_dir=save_dir, offline=offline, log_model=log_model, name=name, **kwargs)
        if self._wandb_init.get("anonymous") is None:  # Lightning always passes it; wandb warns it has no effect
            self._wandb_init.pop("anonymous", None)

    def log_hyperparams(self, params: Any) -> None:
        """Lightning's, without the ``_instantiator`` entry LightningCLI adds to a model's hyperparameters (how to
        rebuild it, not a setting of the run)."""
        if isinstance(params, Mapping):
            params = {k: v for k, v in params.items() if k != "_instantiator"}
        super().log_hyperparams(params)

    def finalize(self, status: str) -> None:
        """End the W&B run when fitting ends (the service writes its files asynchronously: when ``fit`` returns,
        the run on disk is complete, and a later fit in the same process starts its own run)."""
        super().finalize(status)
        if self._experiment is not None:
            folder = Path(self._experiment.dir).parent  # .../wandb/offline-run-.../files -> the run folder
            self._experiment.finish(exit_code=0 if status == "success" else 1)
            self._experiment = None
            # offline, finish() can return before the service has written the last records: wait for the exit record
            deadline = time.monotonic() + (60 if self._offline else 0)
            while time.monotonic() < deadline:
                try:
                    if read_wandb_run(folder)["finished"]:
                        break
                except Exception:  # not written yet (a half-written record does not parse), or another layout
                    pass
                time.sleep(0.2)


class CSVLogger(_CSVLogger):
    """Lightning's ``CSVLogger`` that keeps what a run already wrote: a run resumed into its own directory
    (``--ckpt_path last``) appends to its ``metrics.csv`` instead of deleting it (Lightning's writer removes an
    existing file)."""

    @property
    def experiment(self) -> _ExperimentWriter:
        if not isinstance(self._experiment, _ExperimentWriter):  # None until first used
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class _AppendingWriter(_ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):  # continue the file: its columns are the header so far
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))


def read_wandb_run(path: str | os.PathLike) -> dict[str, Any]:
    """Read back what an (offline) W&B run wrote, without network or the wandb service: ``{"history": [rows],
    "config": {...}, "summary": {...}, "images": [png paths], "tags": [...], "name": str, "step_metrics": {metric or
    glob: the metric its panels are plotted against}}``. ``path`` is a run
    folder (``.../wandb/offline-run-...``) or a folder holding ``wandb/`` (the newest run is read).

    The ``run-*.wandb`` file is a sequence of 32 KiB blocks of records (4-byte checksum, 2-byte length, 1-byte
    type: full / first / middle / last piece), each a ``wandb_internal_pb2.Record`` protobuf."""
    import json
    from pathlib import Path

    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    if not list(path.glob("run-*.wandb")):
        runs = sorted((path / "wandb" if (path / "wandb").is_dir() else path).glob("*run-*"))
        runs = [r for r in runs if r.is_dir()]
        if not runs:
            raise FileNotFoundError(f"no W&B run under {path}")
        path = runs[-1]
    data = next(path.glob("run-*.wandb")).read_bytes()
    out: dict[str, Any] = {
        "history": [],
        "config": {},
        "summary": {},
        "tags": [],
        "name": None,
        "finished": False,
        "step_metrics": {},
    }
    pos, block, pieces = 7, 32768, b""  # after the file header (":W&B", magic, version)
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # the rest of a block too small for a header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        payload, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            continue
        pieces += payload
        if kind in (2, 3):  # first / middle piece of a record that spans blocks
            continue
        record, pieces = pb.Record.FromString(pieces), b""
        field = record.WhichOneof("record_type")
        if field == "history":
            out["history"].append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
        elif field == "config":
            out["config"].update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif field == "summary":
            out["summary"].update(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.summary.update}
            )
        elif field == "metric" and record.metric.step_metric:
            out["step_metrics"][record.metric.name or record.metric.glob_name] = record.metric.step_metric
        elif field == "run":
            out["name"], out["tags"] = record.run.display_name, list(record.run.tags)
        elif field == "exit":
            out["finished"] = True
    out["images"] = sorted(str(p) for p in (path / "files" / "media" / "images").rglob("*.png"))
    return out
