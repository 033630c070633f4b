"""Losses: pure functions plus thin ``nn.Module`` wrappers. No Lightning imports here."""

from lightning_ssl.losses.info_nce import InfoNCELoss, NTXentLoss, info_nce_loss, nt_xent_loss
from lightning_ssl.losses.negative_cosine import NegativeCosineSimilarity, byol_loss, negative_cosine_similarity

__all__ = [
    "InfoNCELoss", "NTXentLoss", "NegativeCosineSimilarity", "byol_loss", "info_nce_loss", "negative_cosine_similarity",
    "nt_xent_loss",
]
