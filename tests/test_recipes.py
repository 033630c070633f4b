"""Every config above 28 px follows a published recipe, value by value.

``RECIPES`` holds, per config, the reference recipe's values, transcribed from the file its header names (the
repositories are cited per entry). Each config is resolved as ``lightning-ssl fit`` resolves it (its YAML parsed
by the CLI's parser, the data's facts written into the model, the network and its optimizer built on the meta
device: ``tests/recipe_tools.py``) and every value is compared; one that differs must be listed in the config's
header as ``# deviation: <key>: <reason>``, and a listed deviation must still differ (no stale excuses).
The deviations are rendered into docs/guides/recipes.md (``python -m tests.test_recipes`` rewrites it).
"""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.recipe_tools import CONFIGS, ROOT, image_size, read_header, resolve

PAGE = ROOT / "docs" / "guides" / "recipes.md"

# -- shared pieces of the recipes ----------------------------------------------------------------------------------
SOLO = "vturrisi/solo-learn scripts/pretrain/cifar/"
SOLO_COMMON = {
    "lr_scaling": "linear/256",
    "schedule": "warmup + cosine",
    "warmup_epochs": 10.0,
    "final_lr": 0.0,
    "global_batch": 256,
    "epochs": 1000,
    "image_size": 32,
    "grad_clip": None,
}
RESNET18_CIFAR = {"backbone": "ResNet", "backbone.arch": "resnet18", "backbone_params_m": 11.17}
# solo-learn's LARS (solo/utils/lars.py): eta 0.02, clip_lr, exclude_bias_n_norm (no decay, no adaptation)
SOLO_LARS = {
    **SOLO_COMMON,
    **RESNET18_CIFAR,
    "optimizer": "Lars",
    "optimizer.momentum": 0.9,
    "lars.eta": 0.02,
    "lars.clip": True,
    "lars.exclude_bias_norm": True,
    "bias_norm_decay": False,
}
# solo-learn's SGD: weight decay on every parameter (exclude_bias_n_norm_wd defaults to False)
SOLO_SGD = {**SOLO_COMMON, **RESNET18_CIFAR, "optimizer": "SGD", "optimizer.momentum": 0.9, "bias_norm_decay": True}
ASYMMETRIC = {  # solo-learn augmentations/asymmetric.yaml = BYOL's views without blur
    "crops": "2ximage[0.08, 1.0]",
    "jitter": (0.4, 0.4, 0.2, 0.1),
    "jitter_prob": 0.8,
    "grayscale_prob": 0.2,
    "blur_prob": 0.0,
    "solarize_prob": [0.0, 0.2],
    "flip_prob": 0.5,
}
SYMMETRIC = {**ASYMMETRIC, "jitter": (0.8, 0.8, 0.8, 0.2), "blur_prob": 0.5, "solarize_prob": 0.0}  # symmetric.yaml
SYMMETRIC_WEAK = {**SYMMETRIC, "jitter": (0.4, 0.4, 0.4, 0.1)}  # symmetric_weak.yaml
BYOL_VIEWS = {**ASYMMETRIC, "blur_prob": [1.0, 0.1]}  # BYOL's table 6 (and Barlow Twins', VICReg's, MoCo v3's)
RESNET50 = {"backbone": "ResNet", "backbone.arch": "resnet50", "backbone_params_m": 23.51, "image_size": 224}
# LARS as SimCLR, BYOL, Barlow Twins, VICReg and MoCo v3 ship it: eta 0.001, biases and norms excluded, no clip
LARS = {
    "optimizer": "Lars",
    "optimizer.momentum": 0.9,
    "lars.eta": 0.001,
    "lars.clip": False,
    "lars.exclude_bias_norm": True,
    "bias_norm_decay": False,
}
LARS_UPDATE_NORM = {"lars.trust_ratio": "|w| / |g + wd w|"}  # barlowtwins / vicreg main.py, moco-v3 optimizer.py


def vit(patch: int, dim: int, depth: int, heads: int, params_m: float, **kw: Any) -> dict[str, Any]:
    out = {
        "backbone": "ViT",
        "backbone.patch_size": patch,
        "backbone.embed_dim": dim,
        "backbone.depth": depth,
        "backbone.num_heads": heads,
        "backbone_params_m": params_m,
    }
    return out | {f"backbone.{k}": v for k, v in kw.items()}


RECIPES: dict[str, dict[str, Any]] = {
    # -- CIFAR-10: solo-learn's recipes (ResNet-18 with the CIFAR stem, batch 256, 1000 epochs) ---------------------
    "barlow_twins/cifar10": {
        "source": SOLO + "barlow.yaml",
        **SOLO_LARS,
        **ASYMMETRIC,
        "lr": 0.3,
        "weight_decay": 1e-4,
        "model.proj_hidden_dim": 2048,
        "model.proj_dim": 2048,
        "model.proj_layers": 3,
        "model.lambda_offdiag": 0.0051,
        "model.loss_scale": 0.1,
    },
    "byol/cifar10": {
        "source": SOLO + "byol.yaml",
        **SOLO_LARS,
        **ASYMMETRIC,
        "lr": 1.0,
        "weight_decay": 1e-5,
        "ema": (0.99, 1.0),
        "ema_schedule": "cosine",
        "model.proj_hidden_dim": 4096,
        "model.proj_dim": 256,
        "model.pred_hidden_dim": 4096,
    },
    "dino/cifar10": {
        "source": SOLO + "dino.yaml",
        **SOLO_LARS,
        **ASYMMETRIC,
        "lr": 0.3,
        "weight_decay": 1e-6,
        "weight_decay_end": None,
        "ema": (0.9995, 1.0),
        "model.hidden_dim": 2048,
        "model.bottleneck_dim": 256,
        "model.out_dim": 4096,
        "model.norm_last_layer": True,
        "model.student_temp": 0.1,
        "model.teacher_temp": 0.07,
        "model.warmup_teacher_temp_epochs": 0,
        "model.freeze_last_layer_epochs": 1,
    },
    "mae/cifar10": {
        "source": SOLO + "mae.yaml",
        **SOLO_COMMON,
        **vit(4, 384, 12, 6, 21.34, pos_embed="sincos", class_token=True),
        "optimizer": "AdamW",
        "optimizer.betas": (0.9, 0.95),
        "bias_norm_decay": True,
        "lr": 2e-4,
        "weight_decay": 0.05,
        "model.mask_ratio": 0.75,
        "model.decoder_dim": 512,
        "model.decoder_depth": 8,
        "model.decoder_heads": 16,
        "model.norm_pix_loss": True,
        "crops": "1ximage[0.08, 1.0]",
        "flip_prob": 0.5,
        "jitter": None,
    },
    "moco/cifar10": {
        "source": SOLO + "mocov2plus.yaml",
        **SOLO_SGD,
        **SYMMETRIC_WEAK,
        "lr": 0.3,
        "weight_decay": 1e-4,
        "ema": (0.99, 0.999),
        "model.proj_hidden_dim": 2048,
        "model.proj_dim": 256,
        "model.queue_size": 32768,
        "model.temperature": 0.2,
        "model.symmetric": True,
    },
    "mocov3/cifar10": {
        "source": SOLO + "mocov3.yaml",
        **SOLO_LARS,
        **ASYMMETRIC,
        "lr": 0.3,
        "weight_decay": 1e-6,
        "ema": (0.99, 1.0),
        "model.temperature": 0.2,
        "model.proj_hidden_dim": 4096,
        "model.proj_dim": 256,
        "model.pred_hidden_dim": 4096,
    },
    "nnclr/cifar10": {
        "source": SOLO + "nnclr.yaml",
        **SOLO_LARS,
        **ASYMMETRIC,
        "lr": 0.4,
        "weight_decay": 1e-5,
        "model.temperature": 0.2,
        "model.queue_size": 65536,
        "model.proj_hidden_dim": 2048,
        "model.proj_dim": 256,
        "model.pred_hidden_dim": 4096,
    },
    "simclr/cifar10": {
        "source": SOLO + "simclr.yaml",
        **SOLO_LARS,
        **SYMMETRIC,
        "lr": 0.4,
        "weight_decay": 1e-4,
        "model.temperature": 0.2,
        "model.proj_hidden_dim": 2048,
        "model.proj_dim": 256,
    },
    "simsiam/cifar10": {
        "source": SOLO + "simsiam.yaml",
        **SOLO_SGD,
        **SYMMETRIC_WEAK,
        "lr": 0.5,
        "weight_decay": 1e-5,
        "model.proj_hidden_dim": 2048,
        "model.proj_dim": 2048,
        "model.pred_hidden_dim": 512,
    },
    "swav/cifar10": {
        "source": SOLO + "swav.yaml",
        **SOLO_LARS,
        **SYMMETRIC,
        "lr": 0.6,
        "weight_decay": 1e-6,
        "model.proj_hidden_dim": 2048,
        "model.proj_dim": 128,
        "model.num_prototypes": 3000,
        "model.temperature": 0.1,
        "model.sinkhorn_epsilon": 0.05,
        "model.sinkhorn_iterations": 3,
        "model.freeze_prototypes_epochs": 2,
        "model.queue_size": 3840,
        "model.queue_start_epoch": 50,
    },
    "vicreg/cifar10": {
        "source": SOLO + "vicreg.yaml",
        **SOLO_LARS,
        **ASYMMETRIC,
        "crops": "2ximage[0.2, 1.0]",
        "solarize_prob": 0.1,
        "lr": 0.3,
        "weight_decay": 1e-4,
        "model.proj_hidden_dim": 2048,
        "model.proj_dim": 2048,
        "model.proj_layers": 3,
        "model.sim_weight": 25.0,
        "model.var_weight": 25.0,
        "model.cov_weight": 1.0,
    },
    "rotation/cifar10": {  # gidariss/FeatureLearningRotNet config/CIFAR10_RotNet_NIN4blocks.py
        "source": "gidariss/FeatureLearningRotNet config/CIFAR10_RotNet_NIN4blocks.py",
        "backbone": "NetworkInNetwork (4 blocks)",
        "optimizer": "SGD",
        "optimizer.momentum": 0.9,
        "optimizer.nesterov": True,
        "lr": 0.1,
        "lr_scaling": "none",
        "weight_decay": 5e-4,
        "bias_norm_decay": True,
        "schedule": "steps x0.2 at epochs 60, 120, 160",
        "global_batch": 128,
        "epochs": 200,
        "crops": "1ximage[1.0, 1.0]",
        "flip_prob": 0.0,
    },
    # -- ImageNet: the papers' own repositories ----------------------------------------------------------------------
    "simclr/imagenet": {  # google-research/simclr run.py, lars_optimizer.py; SimCLR v1 appendix B.1
        "source": "google-research/simclr",
        **RESNET50,
        **LARS,
        "lr": 4.8,
        "lr_scaling": "linear/256",
        "weight_decay": 1e-6,
        "weight_decay_end": None,
        "schedule": "warmup + cosine",
        "warmup_epochs": 10.0,
        "final_lr": 0.0,
        "global_batch": 4096,
        "epochs": 100,
        "model.temperature": 0.1,
        "model.proj_hidden_dim": 2048,
        "model.proj_dim": 128,
        **SYMMETRIC,
    },
    "byol/imagenet": {  # deepmind-research byol/configs/byol.py (1000 epochs), utils/augmentations.py
        "source": "google-deepmind/deepmind-research byol/configs/byol.py",
        **RESNET50,
        **LARS,
        **BYOL_VIEWS,
        "lr": 3.2,
        "lr_scaling": "linear/256",
        "weight_decay": 1.5e-6,
        "warmup_epochs": 10.0,
        "final_lr": 0.0,
        "global_batch": 4096,
        "epochs": 1000,
        "ema": (0.996, 1.0),
        "ema_schedule": "cosine",
        "model.proj_hidden_dim": 4096,
        "model.proj_dim": 256,
        "model.pred_hidden_dim": 4096,
    },
    "barlow_twins/imagenet": {  # facebookresearch/barlowtwins main.py
        "source": "facebookresearch/barlowtwins main.py",
        **RESNET50,
        **LARS,
        **LARS_UPDATE_NORM,
        **BYOL_VIEWS,
        "lr": 1.6,
        "no_decay_lr": 0.0384,
        "lr_scaling": "linear/256",
        "weight_decay": 1.5e-6,
        "warmup_epochs": 10.0,
        "final_lr": 0.0016,
        "global_batch": 2048,
        "epochs": 1000,
        "model.proj_hidden_dim": 8192,
        "model.proj_dim": 8192,
        "model.proj_layers": 3,
        "model.lambda_offdiag": 0.0051,
    },
    "vicreg/imagenet": {  # facebookresearch/vicreg main_vicreg.py, README (1000 epochs)
        "source": "facebookresearch/vicreg",
        **RESNET50,
        **LARS,
        **LARS_UPDATE_NORM,
        **BYOL_VIEWS,
        "lr": 1.6,
        "lr_scaling": "linear/256",
        "weight_decay": 1e-6,
        "warmup_epochs": 10.0,
        "final_lr": 0.0016,
        "global_batch": 2048,
        "epochs": 1000,
        "model.proj_hidden_dim": 8192,
        "model.proj_dim": 8192,
        "model.proj_layers": 3,
        "model.sim_weight": 25.0,
        "model.var_weight": 25.0,
        "model.cov_weight": 1.0,
    },
    "mocov3/imagenet": {  # facebookresearch/moco-v3 CONFIG.md (ResNet-50, 100 epochs), main_moco.py
        "source": "facebookresearch/moco-v3",
        **RESNET50,
        **LARS,
        **LARS_UPDATE_NORM,
        **BYOL_VIEWS,
        "crops": "2ximage[0.2, 1.0]",
        "lr": 9.6,
        "lr_scaling": "linear/256",
        "weight_decay": 1e-6,
        "warmup_epochs": 10.0,
        "final_lr": 0.0,
        "global_batch": 4096,
        "epochs": 100,
        "ema": (0.99, 1.0),
        "ema_schedule": "cosine",
        "model.temperature": 1.0,
        "model.proj_layers": 2,
        "model.proj_hidden_dim": 4096,
        "model.proj_dim": 256,
        "model.pred_hidden_dim": 4096,
    },
    "moco/imagenet": {  # facebookresearch/moco README (MoCo v2), main_moco.py
        "source": "facebookresearch/moco",
        **RESNET50,
        **SYMMETRIC_WEAK,
        "crops": "2ximage[0.2, 1.0]",
        "optimizer": "SGD",
        "optimizer.momentum": 0.9,
        "lr": 0.03,
        "lr_scaling": "none",
        "weight_decay": 1e-4,
        "bias_norm_decay": True,
        "warmup_epochs": 0.0,
        "final_lr": 0.0,
        "global_batch": 256,
        "epochs": 200,
        "ema": (0.999, 0.999),
        "ema_schedule": "constant",
        "model.proj_hidden_dim": 2048,
        "model.proj_dim": 128,
        "model.queue_size": 65536,
        "model.temperature": 0.2,
        "model.symmetric": False,
        "model.shuffle_bn": True,
    },
    "nnclr/imagenet": {  # Dwibedi et al. 2021, sec. 4.1
        "source": "Dwibedi et al. 2021",
        **RESNET50,
        **LARS,
        **BYOL_VIEWS,
        "lr": 4.8,
        "lr_scaling": "linear/256",
        "weight_decay": 1e-6,
        "warmup_epochs": 10.0,
        "final_lr": 0.0,
        "global_batch": 4096,
        "epochs": 1000,
        "model.temperature": 0.1,
        "model.queue_size": 98304,
        "model.proj_hidden_dim": 2048,
        "model.proj_dim": 256,
        "model.pred_hidden_dim": 4096,
    },
    "simsiam/imagenet": {  # facebookresearch/simsiam README (100 epochs), main_simsiam.py
        "source": "facebookresearch/simsiam",
        **RESNET50,
        **SYMMETRIC_WEAK,
        "crops": "2ximage[0.2, 1.0]",
        "optimizer": "SGD",
        "optimizer.momentum": 0.9,
        "lr": 0.1,
        "lr_scaling": "linear/256",
        "weight_decay": 1e-4,
        "bias_norm_decay": True,
        "warmup_epochs": 0.0,
        "final_lr": 0.0,
        "predictor_lr": "constant",
        "global_batch": 512,
        "epochs": 100,
        "model.proj_hidden_dim": 2048,
        "model.proj_dim": 2048,
        "model.pred_hidden_dim": 512,
    },
    "swav/imagenet": {  # facebookresearch/swav scripts/swav_800ep_pretrain.sh, main_swav.py (SGD + LARC)
        "source": "facebookresearch/swav scripts/swav_800ep_pretrain.sh",
        **RESNET50,
        "optimizer": "Lars",
        "optimizer.momentum": 0.9,
        "lars.eta": 0.001,
        "lars.clip": False,
        "lars.exclude_bias_norm": False,
        "bias_norm_decay": True,
        "lr": 4.8,
        "lr_scaling": "none",
        "weight_decay": 1e-6,
        "warmup_epochs": 10.0,
        "warmup_start_lr": 0.3,
        "final_lr": 0.0048,
        "global_batch": 4096,
        "epochs": 800,
        "model.proj_hidden_dim": 2048,
        "model.proj_dim": 128,
        "model.num_prototypes": 3000,
        "model.temperature": 0.1,
        "model.sinkhorn_epsilon": 0.05,
        "model.sinkhorn_iterations": 3,
        "model.num_assigned_crops": 2,
        "model.freeze_prototypes_epochs": 1,
        "model.queue_size": 0,
        "crops": "2ximage[0.14, 1.0] + 6x96[0.05, 0.14]",
        "jitter": (0.8, 0.8, 0.8, 0.2),
        "jitter_prob": 0.8,
        "grayscale_prob": 0.2,
        "blur_prob": 0.5,
        "solarize_prob": 0.0,
    },
    "dino/imagenet": {  # facebookresearch/dino README ("Boosting DINO performance"), main_dino.py defaults
        "source": "facebookresearch/dino",
        **vit(16, 384, 12, 6, 21.67, drop_path_rate=0.1),
        "image_size": 224,
        "optimizer": "AdamW",
        "optimizer.betas": (0.9, 0.999),
        "lr": 2e-3,
        "lr_scaling": "linear/256",
        "weight_decay": 0.04,
        "weight_decay_end": 0.4,
        "bias_norm_decay": False,
        "warmup_epochs": 10.0,
        "final_lr": 1e-6,
        "global_batch": 1024,
        "epochs": 300,
        "grad_clip": "per-parameter norm 3",
        "ema": (0.996, 1.0),
        "ema_schedule": "cosine",
        "model.out_dim": 65536,
        "model.hidden_dim": 2048,
        "model.bottleneck_dim": 256,
        "model.norm_last_layer": False,
        "model.student_temp": 0.1,
        "model.warmup_teacher_temp": 0.04,
        "model.teacher_temp": 0.07,
        "model.warmup_teacher_temp_epochs": 30,
        "model.center_momentum": 0.9,
        "model.freeze_last_layer_epochs": 1,
        "crops": "2ximage[0.4, 1.0] + 8x96[0.05, 0.4]",
        "jitter": (0.4, 0.4, 0.2, 0.1),
        "jitter_prob": 0.8,
        "grayscale_prob": 0.2,
        "blur_prob": [1.0, 0.1] + [0.5] * 8,
        "solarize_prob": [0.0, 0.2] + [0.0] * 8,
    },
    "mae/imagenet": {  # facebookresearch/mae PRETRAIN.md, main_pretrain.py, models_mae.py (ViT-B/16)
        "source": "facebookresearch/mae",
        **vit(16, 768, 12, 12, 85.8, pos_embed="sincos", class_token=True),
        "image_size": 224,
        "optimizer": "AdamW",
        "optimizer.betas": (0.9, 0.95),
        "lr": 2.4e-3,
        "lr_scaling": "linear/256",
        "weight_decay": 0.05,
        "bias_norm_decay": False,
        "warmup_epochs": 40.0,
        "final_lr": 0.0,
        "global_batch": 4096,
        "epochs": 800,
        "model.mask_ratio": 0.75,
        "model.decoder_dim": 512,
        "model.decoder_depth": 8,
        "model.decoder_heads": 16,
        "model.norm_pix_loss": True,
        "crops": "1ximage[0.2, 1.0]",
        "flip_prob": 0.5,
        "jitter": None,
    },
    "beit/imagenet": {  # microsoft/unilm beit README, run_beit_pretraining.py, modeling_pretrain.py
        "source": "microsoft/unilm beit/",
        **vit(
            16,
            768,
            12,
            12,
            85.8,
            layer_scale=0.1,
            rel_pos_bias=True,
            pos_embed="none",
            depth_scaled_init=True,
            drop_path_rate=0.1,
        ),
        "image_size": 224,
        "optimizer": "AdamW",
        "optimizer.betas": (0.9, 0.999),
        "lr": 1.5e-3,
        "lr_scaling": "none",
        "weight_decay": 0.05,
        "bias_norm_decay": False,
        "token_weight_decay": "not decayed",
        "warmup_epochs": 10.0,
        "warmup_start_lr": 1e-6,
        "final_lr": 1e-5,
        "global_batch": 2048,
        "epochs": 800,
        "grad_clip": "global norm 3",
        "model.num_masked": 75,
        "model.min_block": 16,
        "tokenizer": "DALL-E dVAE",
        "crops": "1ximage[0.08, 1.0]",
        "jitter": (0.4, 0.4, 0.4, 0.0),
        "jitter_prob": 1.0,
        "grayscale_prob": 0.0,
        "flip_prob": 0.5,
    },
    "visual_tokenizer/imagenet": {  # microsoft/unilm beit2 TOKENIZER.md, run_vqkd_training.py, modeling_vqkd.py
        "source": "microsoft/unilm beit2/",
        **vit(16, 768, 12, 12, 85.8),
        "image_size": 224,
        "optimizer": "AdamW",
        "optimizer.betas": (0.9, 0.99),
        "lr": 2e-4,
        "lr_scaling": "linear/128",
        "weight_decay": 1e-4,
        "warmup_epochs": 10.0,
        "warmup_start_lr": 1e-6,
        "final_lr": 1e-5,
        "global_batch": 512,
        "epochs": 100,
        "teacher": "CLIP ViT-B/16",
        "model.num_codes": 8192,
        "model.code_dim": 32,
        "model.decay": 0.99,
        "model.commitment": 1.0,
        "model.cosine": True,
        "model.kmeans_init": True,
        "model.update_rule": "norm_ema",
        "model.restart": False,
        "model.decoder_dim": 768,
        "model.decoder_depth": 3,
        "model.decoder_heads": 12,
        "crops": "1ximage[0.08, 1.0]",
        "flip_prob": 0.5,
    },
    "simmim/imagenet": {  # microsoft/SimMIM configs/vit_base__800ep/..., config.py, main_simmim.py
        "source": "microsoft/SimMIM",
        **vit(
            16,
            768,
            12,
            12,
            85.8,
            layer_scale=0.1,
            rel_pos_bias=True,
            pos_embed="none",
            depth_scaled_init=True,
            drop_path_rate=0.1,
            pool="token",
        ),
        "image_size": 224,
        "optimizer": "AdamW",
        "optimizer.betas": (0.9, 0.999),
        "optimizer.eps": 1e-8,
        "lr": 4e-4,
        "lr_scaling": "linear/512",
        "weight_decay": 0.05,
        "bias_norm_decay": False,
        "token_weight_decay": "not decayed",
        "schedule": "warmup + multistep (x0.1 at epoch 700)",
        "warmup_epochs": 10.0,
        "warmup_start_lr": 2e-6,
        "final_lr": 4e-5,
        "global_batch": 2048,
        "epochs": 800,
        "grad_clip": "global norm 5",
        "model.mask_patch_size": 32,
        "model.mask_ratio": 0.6,
        "crops": "1ximage[0.67, 1.0]",
        "flip_prob": 0.5,
    },
    "ijepa/imagenet": {  # facebookresearch/ijepa configs/in1k_vith14_ep300.yaml, src/helper.py, src/train.py
        "source": "facebookresearch/ijepa",
        **vit(14, 1280, 32, 16, 630.8, class_token=False, pos_embed="sincos", drop_path_rate=0.0),
        "image_size": 224,
        "optimizer": "AdamW",
        "optimizer.betas": (0.9, 0.999),
        "lr": 1e-3,
        "lr_scaling": "none",
        "weight_decay": 0.04,
        "weight_decay_end": 0.4,
        "bias_norm_decay": False,
        "warmup_epochs": 40.0,
        "warmup_start_lr": 2e-4,
        "final_lr": 1e-6,
        "global_batch": 2048,
        "epochs": 300,
        "ema": (0.996, 1.0),
        "ema_schedule": "linear",
        "model.predictor_dim": 384,
        "model.predictor_depth": 12,
        "model.predictor_heads": None,  # the encoder's
        "model.num_targets": 4,
        "model.target_scale": (0.15, 0.2),
        "model.target_aspect": (0.75, 1.5),
        "model.context_scale": (0.85, 1.0),
        "model.min_context": 10,
        "model.loss": "smooth_l1",
        "crops": "1ximage[0.3, 1.0]",
        "flip_prob": 0.0,
        "jitter": None,
    },
}
# configs that follow an ImageNet recipe above, scaled to another dataset (their headers list what was scaled)
RECIPES["simclr/imagenet_streaming"] = RECIPES["simclr/imagenet"]
RECIPES["mae/imagenet_vit_gigantic_fsdp"] = {
    **RECIPES["mae/imagenet"],
    **vit(14, 1280, 32, 16, 630.8, pos_embed="sincos", class_token=True, mlp_ratio=4.0),
}
RECIPES["beit/cifar10"] = RECIPES["beit/imagenet"]
RECIPES["simmim/cifar10"] = RECIPES["simmim/imagenet"]
RECIPES["ijepa/cifar10"] = RECIPES["ijepa/imagenet"]
RECIPES["dino/cifar10_vit"] = RECIPES["dino/imagenet"]

# the papers' backbone sizes (millions of parameters, classifier excluded)
PAPER_SIZES = {"resnet50": 23.5, "ViT-S/16": 22.0, "ViT-B/16": 86.0, "ViT-H/14": 632.0}


# -- resolution (cached: test_configs.py reuses it for the networks' structure) ------------------------------------
def config_path(name: str) -> Path:
    return CONFIGS / f"{name}.yaml"


@functools.cache
def resolved(name: str) -> dict[str, Any]:
    reference_batch = RECIPES.get(name, {}).get("global_batch")
    return resolve(config_path(name), reference_batch=reference_batch)


def above_28px() -> list[str]:
    names = [str(p.relative_to(CONFIGS).with_suffix("")) for p in sorted(CONFIGS.glob("*/*.yaml"))]
    return [n for n in names if not n.startswith("shared/") and (image_size(config_path(n)) or 0) > 28]


def same(expected: Any, actual: Any, key: str) -> bool:
    if key.endswith("params_m"):
        return isinstance(actual, float) and math.isclose(actual, expected, rel_tol=0.02)
    if isinstance(expected, float) and isinstance(actual, (int, float)) and not isinstance(actual, bool):
        return math.isclose(actual, expected, rel_tol=1e-4, abs_tol=1e-12)
    if isinstance(expected, (list, tuple)) and isinstance(actual, (list, tuple)):
        return len(expected) == len(actual) and all(same(e, a, key) for e, a in zip(expected, actual, strict=True))
    return expected == actual


def differences(name: str) -> dict[str, tuple[Any, Any]]:
    """{key: (reference, config)} for every value of the reference recipe that the config does not have."""
    values = resolved(name)
    out = {}
    for key, expected in RECIPES[name].items():
        if key == "source":
            continue
        actual = values.get(key, "<absent>")
        if not same(expected, actual, key):
            out[key] = (expected, actual)
    return out


# -- tests -----------------------------------------------------------------------------------------------------------
ABOVE_28PX = above_28px()


def test_every_config_above_28px_names_its_reference():
    assert len(ABOVE_28PX) >= 40
    missing = [n for n in ABOVE_28PX if read_header(config_path(n)) is None]
    assert not missing, f"configs without a '# reference:' header line: {missing}"


@pytest.mark.parametrize("name", ABOVE_28PX)
def test_reference_and_table_agree(name):
    header = read_header(config_path(name))
    assert header is not None
    if header.reference.startswith("none"):
        assert name not in RECIPES, f"{name}: the table holds a recipe, the header says none"
        assert not header.deviations, f"{name}: deviations from no reference"
        assert len(header.reference) > len("none ()"), f"{name}: say why it follows no reference"
    else:
        assert name in RECIPES, f"{name} names a reference ({header.reference}) that the table does not hold"
        assert header.reference.startswith(RECIPES[name]["source"]), (header.reference, RECIPES[name]["source"])


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_config_follows_its_reference(name):
    header = read_header(config_path(name))
    assert header is not None
    diff = differences(name)
    unlisted = {k: v for k, v in diff.items() if k not in header.deviations}
    assert not unlisted, f"{name}: values that differ from the reference, not listed as deviations: {unlisted}"
    stale = [k for k in header.deviations if k not in diff]
    assert not stale, f"{name}: listed deviations that no longer differ (or are not in the table): {stale}"


SIZED = [
    ("simclr/imagenet", "resnet50"),
    ("byol/imagenet", "resnet50"),
    ("barlow_twins/imagenet", "resnet50"),
    ("vicreg/imagenet", "resnet50"),
    ("moco/imagenet", "resnet50"),
    ("mocov3/imagenet", "resnet50"),
    ("nnclr/imagenet", "resnet50"),
    ("simsiam/imagenet", "resnet50"),
    ("swav/imagenet", "resnet50"),
    ("dino/imagenet", "ViT-S/16"),
    ("mae/imagenet", "ViT-B/16"),
    ("beit/imagenet", "ViT-B/16"),
    ("simmim/imagenet", "ViT-B/16"),
    ("visual_tokenizer/imagenet", "ViT-B/16"),
    ("ijepa/imagenet", "ViT-H/14"),
]


@pytest.mark.parametrize(("name", "size"), SIZED)
def test_imagenet_backbone_has_the_papers_size(name, size):
    """Built on the meta device through the CLI's parser: the size without allocating it."""
    assert resolved(name)["backbone_params_m"] == pytest.approx(PAPER_SIZES[size], rel=0.02)


def test_every_imagenet_config_is_in_the_size_test():
    imagenet = {n for n in RECIPES if n.endswith("/imagenet")}
    assert imagenet == {name for name, _ in SIZED}


# -- the docs page: generated from the headers -----------------------------------------------------------------------
SETTINGS = """
## The settings a recipe needs

| recipe value | where it lives |
|---|---|
| LR scaling rule (lr = base x global batch / N) | `lr_scaling.base_batch_size: N` (the optimizer's `lr` is then per N images); MAE's own `base_lr` |
| a learning rate of its own for biases and norms (Barlow Twins: 0.0048 against 0.2) | `param_groups.no_decay_lr` |
| weight decay on biases and norms too (SwAV, MoCo v2, SimSiam, solo-learn's SGD/AdamW) | `param_groups.decay_bias_norm: true` |
| weight decay on a cosine (DINO, I-JEPA: 0.04 -> 0.4) | `weight_decay_schedule.end` (DINO: its own `weight_decay_end`) |
| warm-up from a start LR, final LR | `WarmupCosineLR(warmup_start_ratio, min_lr_ratio)`, fractions of the peak |
| LARS eta, clipping, exclusions | `timm.optim.Lars(trust_coeff=eta, trust_clip=<solo-learn's clip_lr>)`; biases and norms are in a group without weight decay that LARS never adapts (SimCLR, BYOL, Barlow Twins, solo-learn's `exclude_bias_n_norm`); the weights are always adapted |
| gradient clipping | `trainer.gradient_clip_val` (global norm: BEiT 3.0, SimMIM 5.0); DINO's per-parameter `clip_grad` |
| layer scale, shared relative position bias, depth-scaled init, no absolute positions, no CLS token | `ViT(layer_scale=0.1, rel_pos_bias=true, depth_scaled_init=true, pos_embed=none, class_token=false)` |
| teacher EMA | `momentum` -> `momentum_end`, cosine by optimizer step (I-JEPA: linear, as its reference) |
| a tokenizer's codebook update | `VisualTokenizer(update_rule=norm_ema)` (BEiT v2's) or `ema` (VQ-VAE's) |

The CIFAR-10 recipes can be run under lightly's benchmark protocol (ResNet-18, kNN k=200, 200 epochs) with
`bash benchmarks/gpu.sh reproduce` (`benchmarks/reproduce.py`), which prints the result beside lightly's
published numbers; no result has been measured on this project's machines yet."""  # noqa: E501  (Markdown table rows)


def render_page() -> str:
    lines = [
        "# Recipes: what each config follows",
        "",
        "Every config above 28 px names the published recipe it follows and lists, value by value, where it",
        "deliberately differs and why. This page is generated from the configs' headers",
        "(`python -m tests.test_recipes`); `tests/test_recipes.py` checks each config, as `lightning-ssl fit`",
        "resolves it, against the reference's values, and fails on a difference that is not listed here.",
        "Learning rates are compared at the reference's global batch through the config's scaling rule",
        "(`lr_scaling.base_batch_size`, MAE's `base_lr`); `processes` is the number of processes the per-process",
        "batch is meant for.",
        "",
    ]
    lines += SETTINGS.strip("\n").splitlines()
    lines += [
        "",
        "## The configs",
        "",
        "| config | reference | processes | deviations |",
        "|---|---|---|---|",
    ]
    for name in ABOVE_28PX:
        header = read_header(config_path(name))
        assert header is not None
        devs = "<br>".join(f"`{k}`: {v}" for k, v in header.deviations.items()) or "none"
        if header.reference.startswith("none"):
            devs = "-"
        ref = header.reference.replace("|", "\\|")
        lines.append(f"| `configs/{name}.yaml` | {ref} | {header.processes} | {devs.replace('|', chr(92) + '|')} |")
    lines += [
        "",
        "Configs at 28 px (Fashion-MNIST) are CPU-sized demos and follow no published recipe.",
        "",
    ]
    return "\n".join(lines)


def test_recipes_page_is_current():
    assert PAGE.read_text() == render_page(), "docs/guides/recipes.md is stale: python -m tests.test_recipes"


if __name__ == "__main__":
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(render_page())
    print(f"wrote {PAGE}", file=sys.stderr)
