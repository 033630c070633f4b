"""Lightning's ``Trainer`` with ``precision="auto"`` as its default: the precision is chosen for the hardware the
run is on (``lightning_ssl.precision``), and what was chosen and why is logged when the Trainer is built. Any
explicit precision (``--trainer.precision 32-true``, ``Trainer(precision="bf16-mixed")``) is used as given."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L

from lightning_ssl.precision import Chosen, resolve_precision

log = logging.getLogger("lightning.pytorch")


class Trainer(L.Trainer):
    def __init__(self, *args: Any, precision: str | int | None = "auto", **kwargs: Any) -> None:
        chosen, why = resolve_precision(precision, kwargs.get("accelerator", "auto"))
        as_set = chosen == precision and not isinstance(precision, Chosen)
        self.precision_reason = f"precision {chosen} (as set)" if as_set else f"precision {chosen} ({why})"
        super().__init__(*args, precision=chosen, **kwargs)
        if self.is_global_zero:
            log.info(f"lightning-ssl: {self.precision_reason}")
