"""lightning_ssl: self-supervised learning methods as PyTorch Lightning modules."""

__version__ = "0.1.0"
