"""DINO: self-DIstillation with NO labels (Caron et al., "Emerging Properties in Self-Supervised Vision
Transformers", ICCV 2021), with the iBOT and KoLeo terms of DINOv2 (Oquab et al., 2023) as options.

For a batch of multi-crop views (G global crops, then L local crops; see ``data.MultiCropViews``):
    t = g_t(f_t(globals))                  teacher: EMA of the student, global crops only, no gradient
    s = g_s(f_s(globals, locals))          student: backbone + DINO head on every crop
    loss = DINO(s, t; center C, tau_s = 0.1, tau_t: 0.04 -> 0.07 warm-up)     (losses/dino.py)
         + ibot_weight  * iBOT(masked student patch tokens, teacher patch tokens)  (ViT only; losses/ibot.py)
         + koleo_weight * sum over global crops of KoLeo(student CLS features)    (losses/koleo.py)
    C <- 0.9 C + 0.1 mean(t)               over all processes
    (f_t, g_t) <- m (f_t, g_t) + (1 - m) (f_s, g_s)   m from 0.996 to 1, cosine, after each optimizer step
Also from the paper and its code: the head's last layer is frozen during the first epoch, weight decay rises from
0.04 to 0.4 on a cosine schedule, and each parameter's gradient is clipped to norm 3.0 on its own
(``utils.clip_gradients``; ``clip_grad``), before the frozen last layer's gradients are cancelled. Lightning's
``gradient_clip_val`` clips the *global* norm, a much stronger clip for a ViT with ~150 parameter tensors.
``embed`` uses the teacher backbone, which the paper evaluates (``eval_teacher=False`` for the student).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_ssl.losses.dino import DINOLoss
from lightning_ssl.losses.ibot import IBOTPatchLoss
from lightning_ssl.losses.koleo import koleo_loss
from lightning_ssl.methods.base import MomentumMethod
from lightning_ssl.modules.dino_head import DINOHead
from lightning_ssl.modules.masking import block_masking
from lightning_ssl.modules.momentum import make_teacher
from lightning_ssl.optim import WarmupCosineLR, cosine_weight_decay, set_weight_decay


@torch.no_grad()
def clip_gradients_per_parameter(parameters: Any, max_norm: float) -> None:
    """DINO's ``utils.clip_gradients``: every parameter tensor whose gradient norm exceeds ``max_norm`` has its
    gradient scaled to that norm, each on its own (``clip_coef = max_norm / (norm + 1e-6)``)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)
    coefs = [(max_norm / (n + 1e-6)).clamp(max=1.0) for n in norms]
    torch._foreach_mul_(grads, coefs)


def teacher_temperature(step: float, warmup_steps: float, start: float = 0.04, end: float = 0.07) -> float:
    """Linear warm-up of the teacher temperature from ``start`` to ``end`` over ``warmup_steps``, then ``end``."""
    if warmup_steps <= 0:
        return end
    return start + (end - start) * min(1.0, step / warmup_steps)


class DINO(MomentumMethod):
    def __init__(
        self,
        backbone: nn.Module,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        out_dim: int = 65536,
        norm_last_layer: bool = True,
        student_temp: float = 0.1,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.07,
        warmup_teacher_temp_epochs: float = 30,
        center_momentum: float = 0.9,
        num_global_crops: int = 2,
        freeze_last_layer_epochs: int = 1,
        clip_grad: float | None = 3.0,
        weight_decay: float = 0.04,
        weight_decay_end: float | None = 0.4,
        ibot_weight: float = 0.0,
        mask_ratio: tuple[float, float] = (0.1, 0.5),
        mask_probability: float = 0.5,
        koleo_weight: float = 0.0,
        koleo_local: bool = True,
        eval_teacher: bool = True,
        momentum: float = 0.996,
        momentum_end: float = 1.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
        """``weight_decay`` -> ``weight_decay_end``: the weight decay of the decayed parameter groups (weights, not
        biases and norms), cosine by optimizer step, set by DINO whatever the optimizer's own default;
        ``weight_decay_end=None`` keeps it at ``weight_decay``. ``clip_grad``: per-parameter gradient norm clip
        (None: off). ``ibot_weight`` > 0 turns on iBOT (a ViT
        backbone is needed), with ``mask_probability`` of the global crops block-masked at ratios spread over
        ``mask_ratio``; ``koleo_weight`` > 0 turns on KoLeo (DINOv2 uses 1.0 and 0.1), with neighbours searched per
        process as DINOv2 does (``koleo_local=False``: over the global batch)."""
        super().__init__(backbone, optimizer, scheduler, momentum, momentum_end)
        self.save_hyperparameters()
        for name, t in (
            ("student_temp", student_temp),
            ("warmup_teacher_temp", warmup_teacher_temp),
            ("teacher_temp", teacher_temp),
        ):
            if not t > 0:
                raise ValueError(f"{name} must be > 0, got {t}")
        if num_global_crops < 1:
            raise ValueError(f"num_global_crops must be >= 1, got {num_global_crops}")
        if weight_decay < 0 or (weight_decay_end is not None and weight_decay_end < 0):
            raise ValueError(f"weight decay must be >= 0, got {weight_decay} -> {weight_decay_end}")
        if clip_grad is not None and clip_grad <= 0:
            raise ValueError(f"clip_grad must be > 0 (or None: no clipping), got {clip_grad}")
        if ibot_weight < 0 or koleo_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got ibot {ibot_weight}, koleo {koleo_weight}")
        self.use_ibot = ibot_weight > 0
        if self.use_ibot:
            if not hasattr(backbone, "add_mask_token"):
                raise ValueError(
                    f"iBOT (ibot_weight > 0) needs a ViT backbone with patch tokens "
                    f"(lightning_ssl.modules.vit.ViT), got {type(backbone).__name__}"
                )
            block_masking(1, (1, 1), mask_ratio, mask_probability)  # validates the settings
            backbone.add_mask_token()  # before the teacher copy, so student and teacher match
        self.warmup_teacher_temp, self.teacher_temp = warmup_teacher_temp, teacher_temp
        self.warmup_teacher_temp_epochs, self.num_global_crops = warmup_teacher_temp_epochs, num_global_crops
        self.freeze_last_layer_epochs, self.clip_grad = freeze_last_layer_epochs, clip_grad
        self.weight_decay, self.weight_decay_end = weight_decay, weight_decay_end
        self.ibot_weight, self.koleo_weight, self.eval_teacher = ibot_weight, koleo_weight, eval_teacher
        self.koleo_local = koleo_local
        self.mask_ratio, self.mask_probability = tuple(mask_ratio), mask_probability

        self.head = DINOHead(self.num_features, hidden_dim, bottleneck_dim, out_dim, norm_last_layer=norm_last_layer)
        self.teacher_backbone, self.teacher_head = make_teacher(self.backbone), make_teacher(self.head)
        for m in self.teacher_backbone.modules():  # the reference builds the teacher without dropout/drop-path
            if isinstance(m, nn.Dropout):
                m.p = 0.0
            elif hasattr(m, "drop_prob"):  # timm's DropPath
                m.drop_prob = 0.0
        self.dino_loss = DINOLoss(out_dim, student_temp, center_momentum)
        self.ibot_loss = IBOTPatchLoss(out_dim, student_temp, center_momentum) if self.use_ibot else None

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.teacher_backbone), (self.head, self.teacher_head)]

    # -- schedules (functions of the optimizer step) ----------------------------------------------------------
    def steps_per_epoch(self) -> float:
        t = self.trainer
        if math.isfinite(t.num_training_batches) and t.num_training_batches > 0:
            return max(1.0, t.num_training_batches / t.accumulate_grad_batches)
        return max(1.0, t.estimated_stepping_batches / max(1, t.max_epochs or 1))

    def current_teacher_temp(self) -> float:
        if self._trainer is None:
            return self.warmup_teacher_temp
        warmup = self.warmup_teacher_temp_epochs * self.steps_per_epoch()
        return teacher_temperature(self.trainer.global_step, warmup, self.warmup_teacher_temp, self.teacher_temp)

    def current_weight_decay(self) -> float:
        if self.weight_decay_end is None or self._trainer is None:
            return self.weight_decay
        total = int(self.trainer.estimated_stepping_batches)
        return cosine_weight_decay(self.trainer.global_step, total, self.weight_decay, self.weight_decay_end)

    def _schedule_weight_decay(self) -> None:
        wd = self.current_weight_decay()
        set_weight_decay(self.trainer.optimizers[0], wd)  # the no-decay group (biases, norms) stays at 0
        self.log("train/weight_decay", wd)

    # -- training ---------------------------------------------------------------------------------------------
    def _student_globals(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Student on the global crops (G*B, C, H, W) -> CLS features, and with iBOT the patch tokens and mask."""
        if not self.use_ibot:
            return self.backbone(x), None, None
        grid = (x.shape[-2] // self.backbone.patch_size, x.shape[-1] // self.backbone.patch_size)
        mask = block_masking(len(x), grid, self.mask_ratio, self.mask_probability).to(x.device)  # (G*B, N)
        tokens = self.backbone.forward_tokens(x, mask=mask)
        return self.backbone.pool(tokens), tokens[:, 1:], mask

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        views, _ = batch
        g = self.num_global_crops
        if len(views) < g:
            raise ValueError(f"DINO expects {g} global crops first (MultiCropViews), got {len(views)} views")
        x_global, local_views = torch.cat(views[:g]), views[g:]  # crops of one size are forwarded together
        tau_t = self.current_teacher_temp()

        with torch.no_grad():
            if self.use_ibot:
                t_tokens = self.teacher_backbone.forward_tokens(x_global)
                t_feat = self.teacher_backbone.pool(t_tokens)
            else:
                t_feat = self.teacher_backbone(x_global)  # (G*B, D)
            t_out = self.teacher_head(t_feat)  # (G*B, K)

        s_feat, s_patches, mask = self._student_globals(x_global)
        s_out = list(self.head(s_feat).chunk(g))
        if local_views:
            s_out += list(self.head(self.backbone(torch.cat(local_views))).chunk(len(local_views)))
        loss = dino = self.dino_loss(s_out, t_out.chunk(g), tau_t)
        self.log("train/dino_loss", dino)

        if self.use_ibot:
            s_patch_out = self.head(s_patches[mask])  # (M, K): masked patches only
            with torch.no_grad():
                t_patch_out = self.teacher_head(t_tokens[:, 1:][mask])
            ibot = self.ibot_loss(s_patch_out, t_patch_out, mask, tau_t)
            loss = loss + self.ibot_weight * ibot
            self.log("train/ibot_loss", ibot)
        if self.koleo_weight > 0:
            koleo = sum(koleo_loss(f, local=self.koleo_local) for f in s_feat.chunk(g))
            loss = loss + self.koleo_weight * koleo
            self.log("train/koleo_loss", koleo)

        self.log("train/teacher_temp", tau_t)
        self.log("train/loss", loss, prog_bar=True)
        b = len(views[0])  # the monitors see what embed does: the teacher's (or unmasked student's) first crop
        if self.eval_teacher:
            return {"loss": loss, "features": t_feat[:b].detach()}
        return (
            {"loss": loss, "embed_input": views[0]}
            if self.use_ibot
            else {"loss": loss, "features": s_feat[:b].detach()}
        )

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        if self.clip_grad is not None:
            clip_gradients_per_parameter(self.parameters(), self.clip_grad)
        if self.current_epoch < self.freeze_last_layer_epochs:
            for p in self.head.last_layer.parameters():
                p.grad = None  # the optimizer skips it: no update, no weight decay, no moments

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        self._schedule_weight_decay()
        super().optimizer_step(*args, **kwargs)  # the teacher EMA follows the step

    # -- downstream -------------------------------------------------------------------------------------------
    def embed(self, x: Tensor) -> Tensor:
        return (self.teacher_backbone if self.eval_teacher else self.backbone)(x)

    @torch.no_grad()
    def attention_maps(self, x: Tensor) -> Tensor:
        """CLS -> patch self-attention of the last block of the (teacher) ViT: (B, heads, h, w)."""
        backbone = self.teacher_backbone if self.eval_teacher else self.backbone
        if not hasattr(backbone, "last_attention"):
            raise ValueError(f"attention maps need a ViT backbone, got {type(backbone).__name__}")
        return backbone.last_attention(x)
