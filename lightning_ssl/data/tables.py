"""Tables of examples: the rows of a CSV file (with a header row) or of a JSONL file (one JSON object a line)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


def read_rows(path: str, what: str = "table") -> list[dict[str, Any]]:
    """The rows of ``path``, a ``.jsonl`` file or a CSV file with a header row, as dicts.

    Args:
        path: the file to read.
        what: how error messages name the file (e.g. ``"image-text table"``).

    Returns:
        One dict per row (CSV values are strings; JSONL values keep their JSON type).

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file cannot be decoded or parsed, or it has no rows.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    try:
        if p.suffix == ".jsonl":
            rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            with open(p, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise ValueError(f"cannot read {path!r}: {e}") from e
    if not rows:
        raise ValueError(f"{path!r} has no rows")
    return rows
