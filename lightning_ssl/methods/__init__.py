"""Self-supervised methods: one LightningModule per file, each reading like its paper's algorithm."""

from lightning_ssl.methods.base import SSLMethod
from lightning_ssl.methods.simclr import SimCLR

__all__ = ["SSLMethod", "SimCLR"]
