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
    """Lightning's ``Trainer`` with ``precision="auto"``: bf16-mixed where the hardware has native bf16, else fp32.

    Args:
        *args: Lightning ``Trainer`` arguments.
        precision: ``"auto"`` (the default: chosen for the machine and logged), or any Lightning precision
            (``"32-true"``, ``"bf16-mixed"``, ``"16-mixed"``, ...), used as given.
        **kwargs: Lightning ``Trainer`` arguments.
    """

    def __init__(self, *args: Any, precision: str | int | None = "auto", **kwargs: Any) -> None:
        chosen, why = resolve_precision(precision, kwargs.get("accelerator", "auto"))
        as_set = chosen == precision and not isinstance(precision, Chosen)
        self.precision_reason = f"precision {chosen} (as set)" if as_set else f"precision {chosen} ({why})"
        super().__init__(*args, precision=chosen, **kwargs)
        if self.is_global_zero:
            log.info(f"lightning-ssl: {self.precision_reason}")
