"""Export the pretrained backbone of a checkpoint so that other code can use it without lightning_ssl.

    lightning-ssl-eval export --ckpt outputs/simclr_cifar10/version_0 --out resnet18_simclr.pt
    lightning-ssl-eval export --ckpt last.ckpt --out vit_dino --format timm    # timm.create_model("local-dir:vit_dino")
    lightning-ssl-eval export --ckpt last.ckpt --out vit_mae --format hf       # transformers .from_pretrained
    lightning-ssl-eval export --ckpt last.ckpt --out backbone.onnx --format onnx  # onnxruntime

Every format carries the training run's evaluation preprocessing (channels, size, resize, interpolation, mean,
std; ``lightning_ssl.data.preprocessing.Preprocessing``) in its ecosystem's own form, and prints a recipe that
loads the export and its preprocessing with that ecosystem alone (``preprocess``: a PIL image -> the input;
``features``: a batch of inputs -> (B, D), ``embed``'s features):

* ``state_dict``: ``out`` (tensors only, no prefixes: it loads straight into the bare torchvision / timm model)
  and ``out`` with suffix ``.json`` (backbone config, feature width, preprocessing, the recipe; torchvision
  transforms). ``CheckpointBackbone(out)`` reads the pair back.
* ``timm``: a folder ``timm.create_model("local-dir:<out>", pretrained=True)`` loads, whose ``pretrained_cfg``
  holds the preprocessing (``timm.data.resolve_data_config`` + ``create_transform``); timm ViTs and ResNets and
  any ``TimmBackbone``.
* ``hf``: a ``save_pretrained`` folder for transformers (our ViTs converted to ``ViTModel``, Hugging Face
  backbones as they are) with a ``preprocessor_config.json`` that ``AutoImageProcessor`` reads.
* ``onnx``: an ONNX graph with a dynamic batch axis (``pixel_values`` -> ``features``) for every backbone kind,
  the preprocessing in its ``metadata_props`` (and in ``out`` with suffix ``.json``).

The files get the user's umask. The tests load each format with its ecosystem's loader and preprocessor, feed a
PNG file and compare with the project's own features (``lightning_ssl.load``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_ssl.checkpoint import CheckpointError, safe_load
from lightning_ssl.data.preprocessing import Preprocessing
from lightning_ssl.modules.pretrained import _instantiate, backbone_prefix

FORMATS = ("state_dict", "timm", "hf", "onnx")


def _load(checkpoint: str, weights: str) -> tuple[nn.Module, dict[str, Any], dict[str, Any], dict | None]:
    ckpt = safe_load(checkpoint)
    hp = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    config = hp.get("backbone")
    if not isinstance(config, dict) or "state_dict" not in ckpt:
        hint = (
            " (built in Python from a backbone that is not Buildable: its architecture was not recorded)"
            if "_class_path" in hp
            else ""
        )
        raise CheckpointError(f"{checkpoint!r} is not a lightning_ssl checkpoint with a backbone config{hint}")
    backbone: Any = _instantiate(config)
    prefix = backbone_prefix(ckpt, weights, checkpoint)
    sd = {k[len(prefix) :]: v.detach().cpu().clone() for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not sd:
        raise CheckpointError(f"{checkpoint!r} has no tensors under {prefix!r}")
    if "mask_token" in sd and hasattr(backbone, "add_mask_token"):  # an iBOT / BEiT student's ViT
        backbone.add_mask_token()
    backbone.load_state_dict(sd)
    return backbone.eval(), config, hp, ckpt.get("preprocessing")


def load_backbone(checkpoint: str, weights: str = "auto") -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """(backbone with the checkpoint's weights, its config, the checkpoint's hyperparameters)."""
    backbone, config, hp, _ = _load(checkpoint, weights)
    return backbone, config, hp


def export_backbone(
    checkpoint: str,
    out: str,
    weights: str = "auto",
    format: str = "state_dict",
    preprocessing: Preprocessing | dict[str, Any] | None = None,
) -> Path:
    """Write the backbone of ``checkpoint`` to ``out`` in ``format`` with its preprocessing; return ``out``.

    Args:
        checkpoint: a checkpoint file, a run folder (its last checkpoint) or a config's output root.
        out: file (``state_dict``, ``onnx``) or folder (``timm``, ``hf``) to write.
        weights: ``auto`` (the network the method's ``embed`` uses), ``student`` or ``teacher``.
        format: one of ``FORMATS``.
        preprocessing: a ``Preprocessing`` to write instead of the checkpoint's, or a dict of fields that
            override it (``{"mean": [0.5], "std": [0.5]}``): needed for checkpoints that record none and have
            no run ``config.yaml`` beside them (channels and size then come from the backbone).

    Returns:
        ``out``; the loading recipe is in ``out.json`` (files) or ``out/lightning_ssl.json`` (folders).
    """
    from lightning_ssl.runs import resolve_checkpoint

    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    checkpoint = resolve_checkpoint(checkpoint)
    backbone, config, hp, record = _load(checkpoint, weights)
    pre = _preprocessing(checkpoint, backbone, record, preprocessing)
    if getattr(backbone, "rel_pos_bias", None) is not None and format != "onnx":
        raise ValueError(
            f"{checkpoint}: this ViT has a shared relative position bias (BEiT, SimMIM), which timm's "
            f"VisionTransformer and Hugging Face's ViTModel cannot hold; export it with --format onnx, or load the "
            f"checkpoint with lightning_ssl.load / lightning_ssl.modules.pretrained.CheckpointBackbone"
        )
    out_path = Path(out)
    old_umask = os.umask(0)
    os.umask(old_umask)
    inner = ""
    if format == "state_dict":
        inner = getattr(type(backbone), "export_inner", "")
        module = getattr(backbone, inner) if inner else backbone
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(out_path.name + ".tmp")
        torch.save({k: v.detach().clone() for k, v in module.state_dict().items()}, tmp)
        tmp.replace(out_path)
        recipe, meta_path = state_dict_recipe(backbone, config, pre), out_path.with_suffix(".json")
    elif format == "onnx":
        recipe, meta_path = _save_onnx(backbone, out_path, pre), out_path.with_suffix(".json")
    else:
        recipe = (_save_timm if format == "timm" else _save_hf)(backbone, out_path, pre)
        meta_path = out_path / "lightning_ssl.json"
    meta = {
        "source_checkpoint": str(checkpoint),
        "method": hp.get("_class_path"),
        "format": format,
        "backbone_config": config,
        "inner": inner,
        "num_features": getattr(backbone, "num_features", None),
        "preprocessing": pre.to_dict(),
        "how_to_load": recipe.replace("PATH", repr(str(out_path))),
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    for path in [out_path, meta_path, *(out_path.rglob("*") if out_path.is_dir() else [])]:
        if path.is_file():  # some writers (safetensors) create 0600 files: give them the user's umask
            path.chmod(0o666 & ~old_umask)
    return out_path


def _preprocessing(
    checkpoint: str, backbone: nn.Module, record: dict | None, given: Preprocessing | dict[str, Any] | None
) -> Preprocessing:
    """The preprocessing to write: ``given``, else the checkpoint's record (or its run's config.yaml), with the
    fields of a ``given`` dict replacing the record's."""
    from lightning_ssl.loading import preprocessing_from_run

    if isinstance(given, Preprocessing):
        return given
    base = record or preprocessing_from_run(checkpoint) or {}
    facts = {"channels": getattr(backbone, "in_channels", None), "image_size": getattr(backbone, "image_size", None)}
    merged = {**{k: v for k, v in facts.items() if v is not None}, **base, **(given or {})}
    if "mean" not in merged or "std" not in merged:
        raise ValueError(
            f"{checkpoint!r} records no preprocessing (an older checkpoint without its run's config.yaml): state "
            f"it, e.g. --mean [0.286] --std [0.353] (and --image_size / --resize_size if not the backbone's)"
        )
    return Preprocessing.from_dict(merged)


def _image_line(pre: Preprocessing) -> str:
    mode = {1: '"L"', 3: '"RGB"'}.get(pre.channels)
    return f"image.convert({mode})" if mode else "image"


def _usage(pre: Preprocessing) -> str:
    return (
        f"# features(preprocess(Image.open('image.png'))[None]) -> (1, D); preprocess: any image -> "
        f"({pre.channels}, {pre.image_size}, {pre.image_size}), as in training"
    )


# -- state dict ------------------------------------------------------------------------------------------------
def state_dict_recipe(backbone: nn.Module, config: dict[str, Any], pre: Preprocessing) -> str:
    """Python that rebuilds the bare module, loads the exported state dict from PATH and defines ``preprocess``
    (a PIL image -> (C, S, S), torchvision transforms) and ``features`` ((B, C, S, S) -> (B, D))."""
    export_recipe = getattr(backbone, "export_recipe", None)
    if callable(export_recipe):
        build = export_recipe()
    else:
        cls = type(backbone)
        build = (
            f"import torch\nfrom {cls.__module__} import {cls.__name__}\n"
            f"model = {cls.__name__}(**{config.get('init_args', {})!r})\n"
            "model.load_state_dict(torch.load(PATH, weights_only=True))"
        )
    call = "model.features(x)" if "model.features =" in build else "model(x)"
    interpolation = f"v2.InterpolationMode.{pre.interpolation.upper()}"
    return (
        f"{build}\nimport torch\nfrom PIL import Image\nfrom torchvision.transforms import v2\n"
        "model.eval()\n"
        f"transform = v2.Compose([v2.Resize({pre.resize_size}, interpolation={interpolation}, antialias=True), "
        f"v2.CenterCrop({pre.image_size}), v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), "
        f"v2.Normalize({list(pre.mean)}, {list(pre.std)})])\n"
        f"preprocess = lambda image: transform({_image_line(pre)})\n"
        f"def features(x):  # (B, {pre.channels}, {pre.image_size}, {pre.image_size}) -> (B, D)\n"
        f"    with torch.no_grad():\n        return {call}\n"
        f"{_usage(pre)}"
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
        f"ResNets with the standard stem); use --format state_dict or onnx"
    )


def timm_pretrained_cfg(pre: Preprocessing) -> dict[str, Any]:
    """The preprocessing as timm's ``pretrained_cfg`` entries (``resolve_data_config`` reads them): timm resizes
    the short side to ``floor(image_size / crop_pct)``, which this ``crop_pct`` makes ``resize_size``."""
    crop_pct = pre.image_size / pre.resize_size
    if math.floor(pre.image_size / crop_pct) != pre.resize_size:  # floating point: aim half a pixel above
        crop_pct = pre.image_size / (pre.resize_size + 0.5)
    return {
        "input_size": (pre.channels, pre.image_size, pre.image_size),
        "interpolation": pre.interpolation,
        "mean": pre.mean,
        "std": pre.std,
        "crop_pct": crop_pct,
        "crop_mode": "center",
    }


def _save_timm(backbone: nn.Module, out: Path, pre: Preprocessing) -> str:
    from timm.models import save_for_hf

    model: Any
    model, arch, args = _timm_model(backbone)
    model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), "architecture": arch, **timm_pretrained_cfg(pre)}
    save_for_hf(model, str(out), model_args=args, safe_serialization=True)
    return (
        "import timm, torch\nfrom PIL import Image\n"
        'model = timm.create_model("local-dir:" + PATH, pretrained=True).eval()\n'
        "transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))\n"
        f"preprocess = lambda image: transform({_image_line(pre)})\n"
        f"def features(x):  # (B, {pre.channels}, {pre.image_size}, {pre.image_size}) -> (B, D)\n"
        "    with torch.no_grad():\n        return model(x)\n"
        f"{_usage(pre)}"
    )


# -- Hugging Face ------------------------------------------------------------------------------------------------
def vit_to_hf(backbone: Any) -> Any:
    """Our timm-based ``ViT`` (``backbone``) as a ``transformers.ViTModel`` with the same weights (and features)."""
    from transformers import ViTConfig, ViTModel

    registers = getattr(backbone, "num_registers", 0)
    if registers:
        raise ValueError(
            f"a ViT with {registers} register tokens has no transformers ViTModel equivalent: "
            "export it with --format timm or state_dict"
        )
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


def hf_image_processor(pre: Preprocessing):
    """The preprocessing as a transformers image processor (``BitImageProcessor``: short side resized, center
    crop, rescale, normalize), saved as ``preprocessor_config.json`` and read back by ``AutoImageProcessor``."""
    from transformers import BitImageProcessor
    from transformers.image_utils import PILImageResampling

    return BitImageProcessor(
        do_resize=True,
        size={"shortest_edge": pre.resize_size},
        resample=getattr(PILImageResampling, pre.interpolation.upper()),
        do_center_crop=True,
        crop_size={"height": pre.image_size, "width": pre.image_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(pre.mean),
        image_std=list(pre.std),
        do_convert_rgb=pre.channels == 3,
    )


def _save_hf(backbone: nn.Module, out: Path, pre: Preprocessing) -> str:
    from lightning_ssl.modules.pretrained import HFVisionBackbone
    from lightning_ssl.modules.vit import ViT

    if isinstance(backbone, ViT):
        vit_to_hf(backbone).save_pretrained(out)
        kind, load_kw, call_kw = "ViTModel", ", add_pooling_layer=False", ""
        pool = (
            "last_hidden_state[:, 0]" if backbone.model.global_pool == "token" else "last_hidden_state[:, 1:].mean(1)"
        )
    elif isinstance(backbone, HFVisionBackbone):
        backbone.model.save_pretrained(out)
        pool = {
            "cls": "last_hidden_state[:, 0]",
            "mean": "last_hidden_state[:, 1:].mean(1)",
            "pooler": "pooler_output",
        }[backbone.pooling]
        kind, load_kw = type(backbone.model).__name__, ""
        call_kw = ", interpolate_pos_encoding=True" if backbone._forward_kwargs else ""
    else:
        raise ValueError(
            f"{type(backbone).__name__} has no transformers equivalent (hf export covers lightning_ssl ViTs "
            f"and Hugging Face backbones); use --format state_dict, timm or onnx"
        )
    hf_image_processor(pre).save_pretrained(out)
    return (
        f"import torch\nfrom PIL import Image\nfrom transformers import AutoImageProcessor, {kind}\n"
        f"model = {kind}.from_pretrained(PATH{load_kw}).eval()\n"
        "processor = AutoImageProcessor.from_pretrained(PATH)\n"
        f'preprocess = lambda image: processor(images={_image_line(pre)}, return_tensors="pt")["pixel_values"][0]\n'
        f"def features(x):  # (B, {pre.channels}, {pre.image_size}, {pre.image_size}) -> (B, D)\n"
        f"    with torch.no_grad():\n        return model(pixel_values=x{call_kw}).{pool}\n"
        f"{_usage(pre)}"
    )


# -- ONNX --------------------------------------------------------------------------------------------------------
def _save_onnx(backbone: nn.Module, out: Path, pre: Preprocessing) -> str:
    """The backbone as an ONNX graph (``torch.onnx.export``, dynamo), dynamic batch axis, preprocessing in the
    model's ``metadata_props`` (``preprocessing``: the JSON of ``Preprocessing.to_dict``)."""
    try:
        import onnxscript  # noqa: F401  # the dynamo exporter's dependency
    except ImportError as e:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install 'lightning-ssl[onnx]'") from e
    example = torch.zeros(2, pre.channels, pre.image_size, pre.image_size)
    program = torch.onnx.export(
        backbone.eval(),
        (example,),
        input_names=["pixel_values"],
        output_names=["features"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
        dynamo=True,
        verbose=False,
    )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.model.metadata_props["preprocessing"] = json.dumps(pre.to_dict())
    program.model.doc_string = "lightning_ssl backbone: pixel_values (B, C, S, S), preprocessed -> features (B, D)"
    out.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(out))
    resample = {"nearest": "NEAREST", "bilinear": "BILINEAR", "bicubic": "BICUBIC"}[pre.interpolation]
    return (
        "import json\nimport numpy as np\nimport onnxruntime as ort\nfrom PIL import Image\n"
        'session = ort.InferenceSession(PATH, providers=["CPUExecutionProvider"])\n'
        'pre = json.loads(session.get_modelmeta().custom_metadata_map["preprocessing"])\n'
        "def preprocess(image):  # PIL image -> float32 (C, S, S): resize the short side, center crop, normalize\n"
        f"    image = {_image_line(pre)}\n"
        '    w, h = image.size; r, s = pre["resize_size"], pre["image_size"]\n'
        "    w, h = (r, int(r * h / w)) if w <= h else (int(r * w / h), r)\n"
        f"    image = image.resize((w, h), Image.Resampling.{resample})\n"
        "    top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))\n"
        "    x = np.asarray(image.crop((left, top, left + s, top + s)), dtype=np.float32) / 255\n"
        "    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)\n"
        '    mean, std = (np.asarray(pre[k], dtype=np.float32)[:, None, None] for k in ("mean", "std"))\n'
        "    return (x - mean) / std\n"
        f"def features(x):  # (B, {pre.channels}, {pre.image_size}, {pre.image_size}) -> (B, D)\n"
        '    return session.run(["features"], {"pixel_values": np.asarray(x, dtype=np.float32)})[0]\n'
        f"{_usage(pre)}"
    )
