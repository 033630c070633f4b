"""lightning_ssl: self-supervised learning methods as PyTorch Lightning modules."""

__version__ = "0.2.0.dev0"
