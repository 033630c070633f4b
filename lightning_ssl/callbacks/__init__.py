"""Callbacks usable with any method that has ``embed``."""

from lightning_ssl.callbacks.budget import TimeBudget
from lightning_ssl.callbacks.clip import CLIPEmbeddingPlot
from lightning_ssl.callbacks.colorization import ColorizationImages
from lightning_ssl.callbacks.guards import CollapseMonitor, NonFiniteError, NonFiniteGuard
from lightning_ssl.callbacks.images import AttentionMapLogger, MAEReconstructionLogger
from lightning_ssl.callbacks.knn import KNNMonitor
from lightning_ssl.callbacks.probe import OnlineLinearProbe
from lightning_ssl.callbacks.text import TextSamples

__all__ = [
    "AttentionMapLogger", "CLIPEmbeddingPlot", "CollapseMonitor", "ColorizationImages", "KNNMonitor",
    "MAEReconstructionLogger", "NonFiniteError", "NonFiniteGuard", "OnlineLinearProbe", "TextSamples", "TimeBudget",
]
