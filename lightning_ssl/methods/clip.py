"""CLIP: Learning Transferable Visual Models From Natural Language Supervision (Radford et al., ICML 2021).

For a batch of N (image, caption) pairs:
    I = normalize(W_i f(image))       image tower f (any backbone) + linear projection, (N, D)
    T = normalize(W_t g(caption))     text tower g (``modules.text.TextTransformer`` or a pretrained
                                      ``HFTextEncoder``) + linear projection, (N, D)
    loss = symmetric InfoNCE of s * I @ T.T    s = exp(t) learned, t initialized to ln(1/0.07), s <= 100
Negatives come from the global batch under DDP (gathered with gradients; ``local_loss`` keeps the logits
linear in the global batch per process, see ``losses.clip``). ``lock_text`` freezes a pretrained text tower
and ``lock_image`` the image tower (LiT, Zhai et al., CVPR 2022, locks a pretrained image tower); the
projections still learn.

Validation (val dataloader 0 of an ``ImageTextDataModule``: held-out images, their captions and labels) logs
``val/zeroshot_top1`` (class names x prompt templates, ensembled), ``val/i2t_recall@{1,5,10}`` and
``val/t2i_recall@{1,5,10}``; ``validation_step`` also returns the backbone ``features`` and ``labels`` for
the kNN monitor and online probe, and the two embeddings for ``callbacks.CLIPEmbeddingPlot``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_ssl.losses.clip import CLIPLoss
from lightning_ssl.methods.base import SSLMethod
from lightning_ssl.metrics.zeroshot import DEFAULT_TEMPLATES, recall_at_k, zero_shot_accuracy
from lightning_ssl.modules.backbones import Backbone
from lightning_ssl.modules.distributed import gather
from lightning_ssl.modules.text import BPETokenizer, TextEncoder
from lightning_ssl.optim import WarmupCosineLR


@runtime_checkable
class _TrainsTokenizer(Protocol):
    """A text tower that trains its own BPE (``TextTransformer``): CLIP fits it on the training captions."""

    tokenizer: BPETokenizer | None

    def fit_tokenizer(self, texts: Iterable[str]) -> BPETokenizer: ...

    def set_tokenizer(self, tokenizer: BPETokenizer) -> None: ...


class CLIP(SSLMethod):
    """CLIP: image and text encoders trained with a symmetric InfoNCE over the batch, learnable temperature.

    Args:
        backbone: The image tower: images (B, C, H, W) -> features (B, D_i).
        text_encoder: The text tower: ``list[str]`` -> (B, D_t) features. One with ``fit_tokenizer`` and no
            tokenizer yet gets one trained on the datamodule's ``train_captions()`` when fitting starts.
        embed_dim: Width of the shared image-text space (512 for CLIP ViT-B/32).
        temperature: Initial temperature, > 0: the logit scale s = exp(t) starts at 1/temperature (0.07 in the
            paper).
        max_logit_scale: Clamp of the logit scale (100 in the paper).
        learn_logit_scale: Learn the temperature (the paper does); False keeps it fixed.
        lock_image: Freeze the image tower (LiT-style; the projections still train).
        lock_text: Freeze the text tower (e.g. a pretrained MiniLM).
        local_loss: Each process scores its own images against the global batch's texts and vice versa (as
            OpenCLIP's ``local_loss``: less memory, same gradient); False: the full global logit matrix.
        cache_locked_text: With ``lock_text``, remember the text features of every caption seen (the locked tower
            is deterministic), so each distinct caption goes through a large pretrained model once.
        zeroshot_templates: Prompts with one ``{}`` for the class name, e.g. ``"a photo of a {}."``; None:
            the datamodule's.
        recall_ks: The k of the validation recall@k (image->text and text->image); None: (1, 5, 10).
        projections_from: A Hugging Face CLIP folder whose projections and logit scale start this model's (with its
            towers as ``HFVisionBackbone`` / ``HFTextEncoder(pooling="pooler")`` from the same folder the model is
            that CLIP); ``embed_dim`` must be its ``projection_dim``.
        optimizer: Factory called with the parameter groups (no weight decay on biases and norm parameters);
            from a config, the ``class_path`` / ``init_args`` of any ``torch.optim`` optimizer. Default AdamW.
        scheduler: Factory called with the optimizer, stepped every optimizer step. Default ``WarmupCosineLR``
            (linear warm-up, then cosine over ``trainer.estimated_stepping_batches``); None: a constant LR.
    """

    def __init__(
        self,
        backbone: Backbone,
        text_encoder: TextEncoder,
        embed_dim: int = 256,
        temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        learn_logit_scale: bool = True,
        lock_image: bool = False,
        lock_text: bool = False,
        local_loss: bool = True,
        cache_locked_text: bool = True,
        zeroshot_templates: list[str] | None = None,
        recall_ks: list[int] | None = None,
        projections_from: str | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        super().__init__(backbone, optimizer, scheduler)
        self.save_hyperparameters()
        self.text_encoder = text_encoder
        text_dim = getattr(text_encoder, "num_features", None)
        if not isinstance(text_dim, int):
            raise ValueError(f"the text encoder {type(text_encoder).__name__} must have an int num_features")
        self.image_proj = nn.Linear(self.num_features, embed_dim, bias=False)
        self.text_proj = nn.Linear(text_dim, embed_dim, bias=False)
        self.criterion = CLIPLoss(temperature, max_logit_scale, learn_logit_scale, local_loss)
        self.lock_image, self.lock_text = lock_image, lock_text
        if lock_image:
            self.backbone.requires_grad_(False)
        if lock_text:
            self.text_encoder.requires_grad_(False)
        self.cache_locked_text = cache_locked_text
        self._text_cache: dict[str, Tensor] = {}
        self.zeroshot_templates = zeroshot_templates
        self.recall_ks = list(recall_ks or (1, 5, 10))
        if projections_from is not None:
            self._load_projections(projections_from)
        self._eval_store: list[tuple[Tensor, Tensor, Tensor]] = []

    def _load_projections(self, path: str) -> None:
        from transformers import CLIPModel

        from lightning_ssl.modules.backbones import resolve_weights

        hf = CLIPModel.from_pretrained(resolve_weights(path))
        for ours, theirs in ((self.image_proj, hf.visual_projection), (self.text_proj, hf.text_projection)):
            if ours.weight.shape != theirs.weight.shape:
                raise ValueError(
                    f"projections_from={path!r}: its projection is {tuple(theirs.weight.shape)}, this model's "
                    f"{tuple(ours.weight.shape)} (set embed_dim to its projection_dim, "
                    f"{hf.config.projection_dim}, and take both towers from the same checkpoint)"
                )
            with torch.no_grad():
                ours.weight.copy_(theirs.weight)
        with torch.no_grad():
            self.criterion.log_scale.copy_(hf.logit_scale.detach().to(self.criterion.log_scale.dtype))

    # -- the two towers ---------------------------------------------------------------------------------------
    @property
    def logit_scale(self) -> Tensor:
        """s = exp(t), clamped at ``max_logit_scale``."""
        return self.criterion.scale()

    def train(self, mode: bool = True) -> CLIP:
        super().train(mode)
        # locked towers stay in eval mode: no dropout, frozen BatchNorm statistics (as LiT)
        if self.lock_image:
            self.backbone.eval()
        if self.lock_text:
            self.text_encoder.eval()
        return self

    def image_features(self, x: Tensor) -> Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.lock_image):
            return self.backbone(x)  # (B, num_features)

    def text_features(self, texts: list[str]) -> Tensor:
        texts = list(texts)
        if not (self.lock_text and self.cache_locked_text):
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.lock_text):
                return self.text_encoder(texts)  # (B, text num_features)
        missing = list(dict.fromkeys(t for t in texts if t not in self._text_cache))
        if missing:
            with torch.no_grad():
                self._text_cache.update(zip(missing, self.text_encoder(missing).float(), strict=True))
        return torch.stack([self._text_cache[t] for t in texts]).to(self.text_proj.weight.device)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        self._text_cache.clear()  # new text-tower weights: cached features are stale
        return super().load_state_dict(*args, **kwargs)

    def encode_image(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> L2-normalized (B, embed_dim)."""
        return F.normalize(self.image_proj(self.image_features(x)), dim=-1)

    def encode_text(self, texts: list[str]) -> Tensor:
        """B strings -> L2-normalized (B, embed_dim)."""
        return F.normalize(self.text_proj(self.text_features(texts)), dim=-1)

    # -- training ---------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        encoder = self.text_encoder
        if stage != "fit" or not isinstance(encoder, _TrainsTokenizer) or encoder.tokenizer is not None:
            return  # a resumed run gets the tokenizer back from the checkpoint's state_dict
        dm = getattr(self.trainer, "datamodule", None)
        train_captions = getattr(dm, "train_captions", None)
        if train_captions is None:
            raise ValueError(
                f"{type(self.text_encoder).__name__} has no tokenizer and the datamodule "
                f"{type(dm).__name__} has no train_captions() to train one on: give tokenizer_path"
            )
        # rank 0 trains the BPE and every process takes its copy: identical vocabularies under DDP
        state = self.trainer.strategy.broadcast(
            encoder.fit_tokenizer(train_captions()).to_str() if self.global_rank == 0 else None, src=0
        )
        if state is None:
            raise RuntimeError("the tokenizer trained on rank 0 did not reach this process")
        tokenizer = BPETokenizer.from_str(state)
        encoder.set_tokenizer(tokenizer)
        if self.global_rank == 0:
            ckpt = self.trainer.checkpoint_callback
            folder = Path(getattr(ckpt, "dirpath", None) or self.trainer.default_root_dir)
            tokenizer.save(folder / "tokenizer.json")  # also stored in every checkpoint

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        x, _, captions = batch
        h = self.image_features(x)
        loss = self.criterion(self.image_proj(h), self.text_proj(self.text_features(captions)))
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/logit_scale", self.logit_scale.detach())
        return {"loss": loss, "features": h.detach()}

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.criterion.clamp_()

    # -- evaluation -------------------------------------------------------------------------------------------
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        x, y = batch[0], batch[1]
        h = self.image_features(x)
        out = {"features": h, "labels": y}
        if dataloader_idx == 0 and len(batch) > 2:  # held-out pairs: retrieval and zero-shot
            out["image_emb"] = F.normalize(self.image_proj(h), dim=-1)
            out["text_emb"] = self.encode_text(batch[2])
            self._eval_store.append((out["image_emb"].float(), out["text_emb"].float(), y))
        return out

    def on_validation_epoch_start(self) -> None:
        self._eval_store = []

    def on_test_epoch_start(self) -> None:
        self._eval_store = []

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._log_clip_metrics("val")
        self._eval_store = []

    def on_test_epoch_end(self) -> None:
        self._log_clip_metrics("test")
        self._eval_store = []

    def _log_clip_metrics(self, prefix: str) -> None:
        if not self._eval_store:
            return
        img, txt, labels = (gather(torch.cat(t), with_grad=False) for t in zip(*self._eval_store, strict=True))
        for name, q, t in (("i2t", img, txt), ("t2i", txt, img)):
            for k, r in recall_at_k(q, t, self.recall_ks).items():
                self.log(f"{prefix}/{name}_recall@{k}", r, rank_zero_only=True)
        dm = getattr(self.trainer, "datamodule", None)
        class_names = list(getattr(dm, "class_names", None) or [])
        if class_names and (labels >= 0).all():
            templates = self.zeroshot_templates or getattr(dm, "zeroshot_templates", None) or DEFAULT_TEMPLATES
            acc = zero_shot_accuracy(self, None, labels.cpu(), class_names, templates, image_embeddings=img.cpu())
            self.log(f"{prefix}/zeroshot_top1", acc[1], prog_bar=True, rank_zero_only=True)
            if 5 in acc:
                self.log(f"{prefix}/zeroshot_top5", acc[5], rank_zero_only=True)
