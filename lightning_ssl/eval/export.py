"""Export the pretrained backbone of a checkpoint as a plain state dict.

    lightning-ssl-eval export --ckpt outputs/simclr_cifar10/checkpoints/last.ckpt --out resnet18_simclr.pt

writes ``resnet18_simclr.pt`` (tensors only, no prefixes: it loads straight into the bare torchvision / timm
model) and ``resnet18_simclr.json`` (the backbone config, feature width and a snippet that loads the file).
``CheckpointBackbone(path)`` reads the pair back for evaluation or fine-tuning.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lightning_ssl.checkpoint import CheckpointError, safe_load
from lightning_ssl.modules.pretrained import _instantiate, backbone_prefix


def export_backbone(checkpoint: str, out: str, weights: str = "auto") -> Path:
    """Write the backbone of ``checkpoint`` to ``out`` (+ ``out`` with suffix ``.json``); return ``out``.
    ``weights``: ``auto`` (the network the method's ``embed`` uses), ``student`` or ``teacher``."""
    ckpt = safe_load(checkpoint)
    hp = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    config = hp.get("backbone")
    if not isinstance(config, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{checkpoint!r} is not a lightning_ssl checkpoint with a backbone config")
    backbone = _instantiate(config)
    inner = getattr(type(backbone), "export_inner", "")
    prefix = backbone_prefix(ckpt, weights, checkpoint) + (f"{inner}." if inner else "")
    sd = {k[len(prefix):]: v.detach().cpu().clone() for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not sd:
        raise CheckpointError(f"{checkpoint!r} has no tensors under {prefix!r}")
    (getattr(backbone, inner) if inner else backbone).load_state_dict(sd)  # check before writing
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    torch.save(sd, tmp)
    tmp.replace(out_path)
    recipe = backbone.export_recipe() if hasattr(backbone, "export_recipe") else (
        f"from {type(backbone).__module__} import {type(backbone).__name__}\n"
        f"model = {type(backbone).__name__}(**{json.dumps(config.get('init_args', {}))})\n"
        "model.load_state_dict(torch.load(PATH, weights_only=True))")
    meta = {
        "source_checkpoint": str(checkpoint),
        "method": hp.get("_class_path"),
        "backbone_config": config,
        "inner": inner,
        "num_features": getattr(backbone, "num_features", None),
        "how_to_load": recipe.replace("PATH", repr(str(out_path))),
    }
    out_path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    return out_path
