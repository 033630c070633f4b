"""Losses: pure functions plus thin ``nn.Module`` wrappers. No Lightning imports here."""

from lightning_ssl.losses.aim import AIMLoss, aim_loss
from lightning_ssl.losses.barlow_twins import BarlowTwinsLoss, barlow_twins_loss
from lightning_ssl.losses.beit import feature_cosine_loss, masked_token_loss
from lightning_ssl.losses.clip import CLIPLoss, clip_logits, clip_loss
from lightning_ssl.losses.colorization import ab_regression_loss, colorization_loss
from lightning_ssl.losses.densecl import dense_correspondence, densecl_loss
from lightning_ssl.losses.dino import DINOLoss, dino_cross_entropy, dino_loss, sinkhorn_knopp_teacher, updated_center
from lightning_ssl.losses.gram import GramLoss, gram_loss
from lightning_ssl.losses.ibot import IBOTPatchLoss, ibot_cross_entropy, ibot_loss
from lightning_ssl.losses.ijepa import IJEPALoss, ijepa_loss
from lightning_ssl.losses.info_nce import InfoNCELoss, NTXentLoss, info_nce_loss, nt_xent_loss
from lightning_ssl.losses.koleo import KoLeoLoss, koleo_loss
from lightning_ssl.losses.lejepa import lejepa_loss
from lightning_ssl.losses.mae import MAELoss, mae_loss
from lightning_ssl.losses.mmcr import MMCRLoss, mmcr_loss
from lightning_ssl.losses.negative_cosine import NegativeCosineSimilarity, byol_loss, negative_cosine_similarity
from lightning_ssl.losses.nnclr import nearest_neighbours, nnclr_loss
from lightning_ssl.losses.sigreg import SIGReg, sigreg_loss
from lightning_ssl.losses.simmim import SimMIMLoss, simmim_loss
from lightning_ssl.losses.swav import SwAVLoss, sinkhorn, swav_loss
from lightning_ssl.losses.vicreg import VICRegLoss, vicreg_loss

__all__ = [
    "AIMLoss",
    "BarlowTwinsLoss",
    "CLIPLoss",
    "DINOLoss",
    "GramLoss",
    "IBOTPatchLoss",
    "IJEPALoss",
    "InfoNCELoss",
    "KoLeoLoss",
    "MAELoss",
    "MMCRLoss",
    "NTXentLoss",
    "NegativeCosineSimilarity",
    "SIGReg",
    "SimMIMLoss",
    "SwAVLoss",
    "VICRegLoss",
    "ab_regression_loss",
    "aim_loss",
    "barlow_twins_loss",
    "byol_loss",
    "clip_logits",
    "clip_loss",
    "colorization_loss",
    "dense_correspondence",
    "densecl_loss",
    "dino_cross_entropy",
    "dino_loss",
    "feature_cosine_loss",
    "gram_loss",
    "ibot_cross_entropy",
    "ibot_loss",
    "ijepa_loss",
    "info_nce_loss",
    "koleo_loss",
    "lejepa_loss",
    "mae_loss",
    "masked_token_loss",
    "mmcr_loss",
    "nearest_neighbours",
    "negative_cosine_similarity",
    "nnclr_loss",
    "nt_xent_loss",
    "sigreg_loss",
    "simmim_loss",
    "sinkhorn",
    "sinkhorn_knopp_teacher",
    "swav_loss",
    "updated_center",
    "vicreg_loss",
]
