"""Callbacks usable with any method that has ``embed``."""

from lightning_ssl.callbacks.budget import TimeBudget
from lightning_ssl.callbacks.clip import CLIPEmbeddingPlot
from lightning_ssl.callbacks.colorization import ColorizationImages
from lightning_ssl.callbacks.end_of_fit import EndOfRun, LearningRateLogger
from lightning_ssl.callbacks.guards import CollapseMonitor, NonFiniteError, NonFiniteGuard
from lightning_ssl.callbacks.images import (
    AttentionMapLogger,
    EmbeddingPlot,
    MAEReconstructionLogger,
    TokenizerReconstructionLogger,
    ViewGrid,
)
from lightning_ssl.callbacks.knn import KNNMonitor
from lightning_ssl.callbacks.lr_scaling import LinearLRScaling
from lightning_ssl.callbacks.optim import ParamGroups, WeightDecaySchedule
from lightning_ssl.callbacks.probe import OnlineLinearProbe
from lightning_ssl.callbacks.text import TextSamples

__all__ = [
    "AttentionMapLogger",
    "CLIPEmbeddingPlot",
    "CollapseMonitor",
    "ColorizationImages",
    "EmbeddingPlot",
    "EndOfRun",
    "KNNMonitor",
    "LearningRateLogger",
    "LinearLRScaling",
    "MAEReconstructionLogger",
    "NonFiniteError",
    "NonFiniteGuard",
    "OnlineLinearProbe",
    "ParamGroups",
    "TextSamples",
    "TimeBudget",
    "TokenizerReconstructionLogger",
    "ViewGrid",
    "WeightDecaySchedule",
]
