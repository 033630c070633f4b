"""Self-supervised methods (vision, multimodal, language): one LightningModule per file, each reading like its
paper's algorithm."""

from lightning_ssl.methods.aim import AIM
from lightning_ssl.methods.barlow_twins import BarlowTwins
from lightning_ssl.methods.base import MomentumMethod, SSLMethod
from lightning_ssl.methods.beit import BEiT
from lightning_ssl.methods.bert import BERT
from lightning_ssl.methods.byol import BYOL
from lightning_ssl.methods.clip import CLIP
from lightning_ssl.methods.colorization import Colorization
from lightning_ssl.methods.densecl import DenseCL
from lightning_ssl.methods.dino import DINO
from lightning_ssl.methods.gpt import GPT
from lightning_ssl.methods.ijepa import IJEPA
from lightning_ssl.methods.jigsaw import Jigsaw
from lightning_ssl.methods.lejepa import LeJEPA
from lightning_ssl.methods.lm import LanguageModel
from lightning_ssl.methods.mae import MAE
from lightning_ssl.methods.mmcr import MMCR
from lightning_ssl.methods.moco import MoCo
from lightning_ssl.methods.mocov3 import MoCoV3
from lightning_ssl.methods.nnclr import NNCLR
from lightning_ssl.methods.rotation import RotNet
from lightning_ssl.methods.simclr import SimCLR
from lightning_ssl.methods.simmim import SimMIM
from lightning_ssl.methods.simsiam import SimSiam
from lightning_ssl.methods.swav import SwAV
from lightning_ssl.methods.t5 import T5
from lightning_ssl.methods.vicreg import VICReg
from lightning_ssl.methods.visual_tokenizer import PatchTokenizer, VisualTokenizer

__all__ = [
    "AIM",
    "BERT",
    "BYOL",
    "CLIP",
    "DINO",
    "GPT",
    "IJEPA",
    "MAE",
    "MMCR",
    "NNCLR",
    "T5",
    "BEiT",
    "BarlowTwins",
    "Colorization",
    "DenseCL",
    "Jigsaw",
    "LanguageModel",
    "LeJEPA",
    "MoCo",
    "MoCoV3",
    "MomentumMethod",
    "PatchTokenizer",
    "RotNet",
    "SSLMethod",
    "SimCLR",
    "SimMIM",
    "SimSiam",
    "SwAV",
    "VICReg",
    "VisualTokenizer",
]
