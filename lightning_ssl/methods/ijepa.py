"""I-JEPA: Self-Supervised Learning from Images with a Joint-Embedding Predictive Architecture (Assran et al.,
CVPR 2023).

For each image x (one view: random resized crop, no other augmentation), on its h x w patch grid:
    context (B, K_c), targets (B, M, K_t) = multiblock_masks(...)   M = 4 target blocks (scale 0.15-0.2, aspect
                                           0.75-1.5), one context block (scale 0.85-1.0) with the targets cut out;
                                           the whole batch shares K_c and K_t (modules/multiblock.py)
    s_y = f_t(x)[targets]                  EMA target encoder on the *full* image, its tokens at each target block
    s_x = f(x[context])                    context encoder: a ViT on the context patches only (B, K_c, D)
    s_y_hat = g(s_x, positions)            narrow ViT predictor: context tokens + one mask token per target patch
                                           (with its position), run once per target block -> (B, M, K_t, D)
    loss = smooth_l1(s_y_hat, LayerNorm(s_y))                       (losses/ijepa.py; as facebookresearch/ijepa)
    f_t <- m f_t + (1 - m) f                m from 0.996 to 1, linear in the optimizer step (as the reference)
No pixel reconstruction and no hand-made view augmentations: the targets are representations. ``embed`` is the
target encoder with its patch tokens pooled (the paper evaluates the target encoder, average-pooled); exported and
evaluated from a checkpoint the same way (``teacher_backbone``, ``eval_teacher``; see ``lightning-ssl-eval export``).
The reference's encoders have no CLS token (``ViT(class_token=False, pool="avg", pos_embed="sincos")``), and its
recipe raises the weight decay 0.04 -> 0.4 on a cosine (``weight_decay_schedule.end``) and warms the LR up from
2e-4 to 1e-3 (``WarmupCosineLR(warmup_start_ratio=0.2)``): configs/ijepa/imagenet.yaml.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from lightning_ssl.losses.ijepa import IJEPALoss
from lightning_ssl.methods.base import MomentumMethod
from lightning_ssl.modules.backbones import Backbone
from lightning_ssl.modules.masking import gather_tokens
from lightning_ssl.modules.momentum import make_teacher
from lightning_ssl.modules.multiblock import multiblock_masks
from lightning_ssl.modules.vit import ViT, sincos_pos_embed
from lightning_ssl.optim import WarmupCosineLR


class JEPAPredictor(nn.Module):
    """The predictor: project the context tokens to ``dim``, add fixed 2-D sin-cos positions, append a learnable
    mask token (plus its position) for every patch of one target block, transformer blocks, project back.
    Initialised as the reference's ``init_model`` leaves it: every Linear weight trunc_normal(std 0.02) with zero
    bias, LayerNorms (eps 1e-6) at weight 1 and bias 0, the mask token trunc_normal(0.02).

    Args:
        encoder_dim: the encoder's token width.
        grid: the encoder's patch grid (h, w).
        dim: the predictor's width (I-JEPA: 384).
        depth: predictor blocks (I-JEPA: 12 for ViT-H/14, 6 in the reference code's default).
        num_heads: attention heads per block (I-JEPA: the encoder's).
        mlp_ratio: MLP hidden width / dim (4).
    """

    pos_embed: Tensor  # (1, N, dim) fixed sine-cosine positions (a buffer)

    def __init__(
        self,
        encoder_dim: int,
        grid: tuple[int, int],
        dim: int = 384,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_pos_embed(dim, grid, cls_token=False)[None], persistent=False)
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.proj = nn.Linear(dim, encoder_dim)
        for m in self.modules():  # the reference's init_weights (src/helper.py init_model)
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, context: Tensor, context_ids: Tensor, target_ids: Tensor) -> Tensor:
        """context (B, K_c, D_enc) at patches ``context_ids`` (B, K_c); target_ids (B, M, K_t) -> (B, M, K_t, D_enc)."""
        b, m, kt = target_ids.shape
        pos = self.pos_embed.expand(b, -1, -1)
        x = self.embed(context) + gather_tokens(pos, context_ids)  # (B, K_c, d)
        queries = self.mask_token.to(x.dtype) + gather_tokens(pos, target_ids.flatten(1))  # (B, M * K_t, d)
        x = torch.cat([x.repeat_interleave(m, dim=0), queries.reshape(b * m, kt, -1)], dim=1)  # one run per block
        x = self.norm(self.blocks(x))[:, -kt:]
        return self.proj(x).view(b, m, kt, -1)


class IJEPA(MomentumMethod):
    """I-JEPA: predict the EMA target encoder's representations of target blocks from a context block.

    Args:
        backbone: The encoder, a ``lightning_ssl.modules.vit.ViT`` (images (B, C, H, W) -> features (B, D));
            kept for downstream use (``embed``). The reference's encoders have no CLS token (``class_token:
            false``, ``pool: avg``).
        predictor_dim: Width of the narrow ViT predictor (384 in the paper).
        predictor_depth: Transformer blocks in the predictor (12 in the paper).
        predictor_heads: Attention heads per predictor block; None: the encoder's (the reference).
        num_targets: Target blocks M per image (4 in the paper).
        target_scale: Range of a target block's area as a fraction of the image ((0.15, 0.2) in the paper).
        target_aspect: Range of a target block's aspect ratio ((0.75, 1.5) in the paper).
        context_scale: Range of the context block's area before the targets are cut out ((0.85, 1.0) in the
            paper).
        min_context: Fewest context patches kept per image after the targets are removed (10 in the reference).
        loss: ``"smooth_l1"`` (the reference code) or ``"mse"`` (the paper's text: L2) between prediction and
            layer-normed target.
        eval_teacher: ``embed`` uses the EMA target encoder (the paper evaluates it); False: the context encoder.
        momentum: EMA momentum of the teacher (target) network at the first optimizer step, in [0, 1];
            0.996 in the paper, rising to 1.
        momentum_end: Momentum at the last optimizer step, reached linearly in the optimizer step as in the
            reference (correct under gradient accumulation and resume); equal to ``momentum`` for a constant one.
        optimizer: Factory called with the parameter groups (no weight decay on biases and norm parameters);
            from a config, the ``class_path`` / ``init_args`` of any ``torch.optim`` optimizer. Default AdamW.
        scheduler: Factory called with the optimizer, stepped every optimizer step. Default ``WarmupCosineLR``
            (linear warm-up, then cosine over ``trainer.estimated_stepping_batches``); None: a constant LR.
    """

    backbone: ViT  # checked in __init__

    def __init__(
        self,
        backbone: Backbone,
        predictor_dim: int = 384,
        predictor_depth: int = 12,
        predictor_heads: int | None = None,
        num_targets: int = 4,
        target_scale: tuple[float, float] = (0.15, 0.2),
        target_aspect: tuple[float, float] = (0.75, 1.5),
        context_scale: tuple[float, float] = (0.85, 1.0),
        min_context: int = 10,
        loss: str = "smooth_l1",
        eval_teacher: bool = True,
        momentum: float = 0.996,
        momentum_end: float = 1.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        if not isinstance(backbone, ViT):
            raise ValueError(
                f"I-JEPA needs a ViT backbone that encodes a subset of patches "
                f"(lightning_ssl.modules.vit.ViT), got {type(backbone).__name__}"
            )
        super().__init__(backbone, optimizer, scheduler, momentum, momentum_end)
        self.save_hyperparameters()
        self.mask_kwargs: dict[str, Any] = dict(
            num_targets=num_targets,
            target_scale=tuple(target_scale),
            target_aspect=tuple(target_aspect),
            context_scale=tuple(context_scale),
            min_keep=min_context,
        )
        multiblock_masks(1, backbone.grid_size, **self.mask_kwargs)  # validates the settings
        predictor_heads = predictor_heads or backbone.num_heads
        if predictor_dim % predictor_heads:
            raise ValueError(f"predictor_dim {predictor_dim} is not divisible by predictor_heads {predictor_heads}")
        self.criterion = IJEPALoss(loss)
        self.eval_teacher = eval_teacher
        self.teacher_backbone = make_teacher(self.backbone)  # the target encoder (named as DINO's, for export/eval)
        self.predictor = JEPAPredictor(
            backbone.num_features, backbone.grid_size, predictor_dim, predictor_depth, predictor_heads
        )

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.teacher_backbone)]

    def current_momentum(self) -> float:
        """Linear from ``momentum`` to ``momentum_end`` over the run's optimizer steps (the reference's schedule)."""
        if self._trainer is None:
            return self.momentum
        total = max(1, int(self.trainer.estimated_stepping_batches) - 1)
        progress = min(1.0, self.trainer.global_step / total)
        return self.momentum + (self.momentum_end - self.momentum) * progress

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        views, _ = batch
        x = views[0] if isinstance(views, (list, tuple)) else views
        if tuple(x.shape[-2:]) != (self.backbone.image_size,) * 2:
            raise ValueError(
                f"I-JEPA's masks are drawn for {self.backbone.image_size} px images, got {tuple(x.shape[-2:])}"
            )
        context_ids, target_ids = (
            t.to(x.device) for t in multiblock_masks(len(x), self.backbone.grid_size, **self.mask_kwargs)
        )
        with torch.no_grad():
            t_tokens = self.teacher_backbone.forward_tokens(x)  # (B, 1 + N, D): the full image
            b, m, kt = target_ids.shape
            targets = gather_tokens(t_tokens[:, 1:], target_ids.flatten(1)).view(b, m, kt, -1)
        context = self.backbone.forward_tokens(x, ids_keep=context_ids)[:, 1:]  # (B, K_c, D), CLS dropped
        pred = self.predictor(context, context_ids, target_ids)
        loss = self.criterion(pred, targets)
        self.log("train/loss", loss, prog_bar=True)
        if self.eval_teacher:  # the monitors see what embed gives: the target encoder on the full image
            return {"loss": loss, "features": self.teacher_backbone.pool(t_tokens).detach()}
        return {"loss": loss, "embed_input": x}

    def embed(self, x: Tensor) -> Tensor:
        return (self.teacher_backbone if self.eval_teacher else self.backbone)(x)
