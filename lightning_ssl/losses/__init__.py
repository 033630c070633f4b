"""Losses: pure functions plus thin ``nn.Module`` wrappers. No Lightning imports here."""

from lightning_ssl.losses.info_nce import InfoNCELoss, NTXentLoss, info_nce_loss, nt_xent_loss

__all__ = ["InfoNCELoss", "NTXentLoss", "info_nce_loss", "nt_xent_loss"]
