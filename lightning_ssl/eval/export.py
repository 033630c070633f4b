"""Export the pretrained backbone of a checkpoint so that other code can use it without lightning_ssl.

    lightning-ssl-eval export --ckpt outputs/simclr_cifar10/version_0/checkpoints/last.ckpt --out resnet18_simclr.pt
    lightning-ssl-eval export --ckpt last.ckpt --out vit_dino --format timm   # timm.create_model("local-dir:vit_dino")
    lightning-ssl-eval export --ckpt last.ckpt --out vit_mae --format hf      # transformers AutoModel.from_pretrained

``state_dict`` (default) writes ``out`` (tensors only, no prefixes: it loads straight into the bare torchvision /
timm model) and ``out`` with suffix ``.json`` (the backbone config, feature width and a snippet that loads the
file with torch + torchvision / timm alone; ``CheckpointBackbone(out)`` also reads the pair back). ``timm`` writes
a folder timm loads by itself (timm ViTs and ResNets, any ``TimmBackbone``); ``hf`` a ``save_pretrained`` folder
for transformers (our ViTs, converted to ``ViTModel``; Hugging Face backbones as they are). Every format's
snippet is executed by the tests and gives ``embed``'s features.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_ssl.checkpoint import CheckpointError, safe_load
from lightning_ssl.modules.pretrained import _instantiate, backbone_prefix

FORMATS = ("state_dict", "timm", "hf")


def load_backbone(checkpoint: str, weights: str = "auto") -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """(backbone with the checkpoint's weights, its config, the checkpoint's hyperparameters)."""
    ckpt = safe_load(checkpoint)
    hp = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    config = hp.get("backbone")
    if not isinstance(config, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{checkpoint!r} is not a lightning_ssl checkpoint with a backbone config")
    backbone = _instantiate(config)
    prefix = backbone_prefix(ckpt, weights, checkpoint)
    sd = {k[len(prefix) :]: v.detach().cpu().clone() for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not sd:
        raise CheckpointError(f"{checkpoint!r} has no tensors under {prefix!r}")
    if "mask_token" in sd and hasattr(backbone, "add_mask_token"):  # an iBOT / BEiT student's ViT
        backbone.add_mask_token()
    backbone.load_state_dict(sd)
    return backbone.eval(), config, hp


def export_backbone(checkpoint: str, out: str, weights: str = "auto", format: str = "state_dict") -> Path:
    """Write the backbone of ``checkpoint`` to ``out`` in ``format``; return ``out``. ``weights``: ``auto`` (the
    network the method's ``embed`` uses), ``student`` or ``teacher``. The loading snippet is in
    ``out.json`` (``state_dict``) or ``out/lightning_ssl.json`` (folders)."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    backbone, config, hp = load_backbone(checkpoint, weights)
    if getattr(backbone, "rel_pos_bias", None) is not None:
        raise ValueError(
            f"{checkpoint}: this ViT has a shared relative position bias (BEiT, SimMIM), which timm's "
            f"VisionTransformer and Hugging Face's ViTModel cannot hold; load the checkpoint with "
            f"lightning_ssl.modules.pretrained.CheckpointBackbone instead"
        )
    out_path = Path(out)
    if format == "state_dict":
        inner = getattr(type(backbone), "export_inner", "")
        module = getattr(backbone, inner) if inner else backbone
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(out_path.name + ".tmp")
        torch.save({k: v.detach().clone() for k, v in module.state_dict().items()}, tmp)
        tmp.replace(out_path)
        recipe, meta_path = state_dict_recipe(backbone, config), out_path.with_suffix(".json")
    else:
        recipe = (_save_timm if format == "timm" else _save_hf)(backbone, out_path)
        meta_path, inner = out_path / "lightning_ssl.json", ""
    meta = {
        "source_checkpoint": str(checkpoint),
        "method": hp.get("_class_path"),
        "format": format,
        "backbone_config": config,
        "inner": inner,
        "num_features": getattr(backbone, "num_features", None),
        "how_to_load": recipe.replace("PATH", repr(str(out_path))),
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    return out_path


# -- state dict ------------------------------------------------------------------------------------------------
def state_dict_recipe(backbone: nn.Module, config: dict[str, Any]) -> str:
    """Python that rebuilds the bare module and loads the exported state dict from PATH; the last line leaves
    the features function in ``features``: images (B, C, H, W) -> (B, D)."""
    if hasattr(backbone, "export_recipe"):
        recipe = backbone.export_recipe()
        return recipe + (
            "\nfeatures = model.eval().features" if "model.features =" in recipe else "\nfeatures = model.eval()"
        )
    cls = type(backbone)
    return (
        f"import torch\nfrom {cls.__module__} import {cls.__name__}\n"
        f"model = {cls.__name__}(**{config.get('init_args', {})!r})\n"
        "model.load_state_dict(torch.load(PATH, weights_only=True))\nfeatures = model.eval()"
    )


# -- timm --------------------------------------------------------------------------------------------------------
def _timm_model(backbone: nn.Module) -> tuple[nn.Module, str, dict[str, Any]]:
    """(the timm model holding the backbone's weights, its architecture name, its constructor arguments)."""
    import timm

    from lightning_ssl.modules.backbones import ResNet, TimmBackbone
    from lightning_ssl.modules.vit import ViT

    if isinstance(backbone, TimmBackbone):
        args = {"num_classes": 0, "in_chans": backbone.in_channels, **backbone.model_kwargs}
        return backbone.model, backbone.name, args
    if isinstance(backbone, ViT):
        args = dict(backbone.model_kwargs.items())
        model = timm.create_model("vit_base_patch16_224", pretrained=False, **args)
        model.load_state_dict(backbone.model.state_dict())
        return model, "vit_base_patch16_224", args
    if isinstance(backbone, ResNet) and not backbone.small_input:  # timm's ResNets use torchvision's names
        args = {"num_classes": 0, "in_chans": backbone.in_channels}
        model = timm.create_model(backbone.arch, pretrained=False, **args)
        model.load_state_dict(dict(backbone.net.state_dict().items()))
        return model, backbone.arch, args
    raise ValueError(
        f"{type(backbone).__name__} has no timm equivalent (timm export covers TimmBackbone, ViT and "
        f"ResNets with the standard stem); use --format state_dict"
    )


def _save_timm(backbone: nn.Module, out: Path) -> str:
    from timm.models import save_for_hf

    model, arch, args = _timm_model(backbone)
    model.pretrained_cfg = {
        **getattr(model, "pretrained_cfg", {}),
        "architecture": arch,
        "input_size": (backbone.in_channels, backbone.image_size, backbone.image_size),
    }
    save_for_hf(model, str(out), model_args=args, safe_serialization=True)
    pool = "features = lambda x: model.eval()(x)"
    return f'import timm\nmodel = timm.create_model("local-dir:" + PATH, pretrained=True)\n{pool}'


# -- Hugging Face ------------------------------------------------------------------------------------------------
def vit_to_hf(backbone: nn.Module):
    """Our timm-based ``ViT`` as a ``transformers.ViTModel`` with the same weights (and features)."""
    from transformers import ViTConfig, ViTModel

    m, kw = backbone.model, backbone.model_kwargs
    d, depth = kw["embed_dim"], kw["depth"]
    config = ViTConfig(
        hidden_size=d,
        num_hidden_layers=depth,
        num_attention_heads=kw["num_heads"],
        intermediate_size=int(d * kw["mlp_ratio"]),
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        image_size=kw["img_size"],
        patch_size=kw["patch_size"],
        num_channels=kw["in_chans"],
        qkv_bias=kw["qkv_bias"],
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = ViTModel(config, add_pooling_layer=False)
    old_layout = any(k.startswith("encoder.layer.") for k in model.state_dict())  # transformers < 5 names
    names = (
        (
            ("attention.attention.query", "attention.attention.key", "attention.attention.value"),
            {"attn.proj": "attention.output.dense", "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"},
            "encoder.layer.",
        )
        if old_layout
        else (
            ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
            {"attn.proj": "attention.o_proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"},
            "layers.",
        )
    )
    (q_name, k_name, v_name), linear, layer = names
    sd = m.state_dict()
    new: dict[str, Tensor] = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.position_embeddings": sd["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "layernorm.weight": sd["norm.weight"],
        "layernorm.bias": sd["norm.bias"],
    }
    for i in range(depth):
        b, h = f"blocks.{i}.", f"{layer}{i}."
        for kind in ("weight", "bias") if kw["qkv_bias"] else ("weight",):
            for name, part in zip((q_name, k_name, v_name), sd[f"{b}attn.qkv.{kind}"].chunk(3), strict=True):
                new[f"{h}{name}.{kind}"] = part
        for ours, theirs in (*linear.items(), ("norm1", "layernorm_before"), ("norm2", "layernorm_after")):
            new[h + theirs + ".weight"], new[h + theirs + ".bias"] = sd[b + ours + ".weight"], sd[b + ours + ".bias"]
    model.load_state_dict({k: v.clone() for k, v in new.items()})
    return model.eval()


def _save_hf(backbone: nn.Module, out: Path) -> str:
    from lightning_ssl.modules.pretrained import HFVisionBackbone
    from lightning_ssl.modules.vit import ViT

    if isinstance(backbone, ViT):
        vit_to_hf(backbone).save_pretrained(out)
        pool = (
            "last_hidden_state[:, 0]" if backbone.model.global_pool == "token" else "last_hidden_state[:, 1:].mean(1)"
        )
        return (
            "from transformers import ViTModel\nmodel = ViTModel.from_pretrained(PATH, add_pooling_layer=False)\n"
            f"features = lambda x: model.eval()(pixel_values=x).{pool}"
        )
    if isinstance(backbone, HFVisionBackbone):
        backbone.model.save_pretrained(out)
        pool = {
            "cls": "last_hidden_state[:, 0]",
            "mean": "last_hidden_state[:, 1:].mean(1)",
            "pooler": "pooler_output",
        }[backbone.pooling]
        kind = type(backbone.model).__name__
        extra = ", interpolate_pos_encoding=True" if backbone._forward_kwargs else ""
        return (
            f"from transformers import {kind}\nmodel = {kind}.from_pretrained(PATH)\n"
            f"features = lambda x: model.eval()(pixel_values=x{extra}).{pool}"
        )
    raise ValueError(
        f"{type(backbone).__name__} has no transformers equivalent (hf export covers lightning_ssl ViTs "
        f"and Hugging Face backbones); use --format state_dict or timm"
    )
