"""lightning_ssl: self-supervised learning methods as PyTorch Lightning modules."""

__version__ = "0.2.0.dev0"

# ``lightning_ssl.load(run_or_checkpoint)`` reloads a trained run (``lightning_ssl.loading.load``), imported on first
# use: importing the package stays light (no torch), so the console entry points start at once.
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_ssl.loading import Loaded, load

__all__ = ["Loaded", "__version__", "load"]


def __getattr__(name: str) -> Any:
    if name in ("load", "Loaded"):
        from lightning_ssl import loading

        return getattr(loading, name)
    raise AttributeError(f"module 'lightning_ssl' has no attribute {name!r}")
