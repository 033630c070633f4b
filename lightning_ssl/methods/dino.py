"""DINO: self-DIstillation with NO labels (Caron et al., "Emerging Properties in Self-Supervised Vision
Transformers", ICCV 2021), with the iBOT, KoLeo, Sinkhorn-Knopp and separate-head options of DINOv2 (Oquab et al.,
2023) and the Gram anchoring of DINOv3 (Siméoni et al., 2025).

For a batch of multi-crop views (G global crops, then L local crops; see ``data.MultiCropViews``):
    t = g_t(f_t(globals))                  teacher: EMA of the student, global crops only, no gradient
    s = g_s(f_s(globals, locals))          student: backbone + DINO head on every crop
    loss = DINO(s, t; center C, tau_s = 0.1, tau_t: 0.04 -> 0.07 warm-up)     (losses/dino.py)
         + ibot_weight  * iBOT(masked student patch tokens, teacher patch tokens)  (ViT only; losses/ibot.py;
                                            the DINO head, or its own head with ``ibot_separate_head``)
         + koleo_weight * sum over global crops of KoLeo(student CLS features)    (losses/koleo.py)
         + gram_weight  * Gram(student patch tokens, Gram teacher's patch tokens)  from step ``gram_start``
                                            (ViT only; losses/gram.py, modules/gram_teacher.py)
    C <- 0.9 C + 0.1 mean(t)               over all processes; ``centering="sinkhorn"``: no C, the teacher's
                                            targets are Sinkhorn-Knopp normalized over the global batch instead
    (f_t, g_t) <- m (f_t, g_t) + (1 - m) (f_s, g_s)   m from 0.996 to 1, cosine, after each optimizer step
    Gram teacher <- f_t                     at ``gram_start``, then every ``gram_update_every`` steps
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
from lightning_ssl.losses.gram import gram_loss
from lightning_ssl.losses.ibot import IBOTPatchLoss
from lightning_ssl.losses.koleo import koleo_loss
from lightning_ssl.methods.base import MomentumMethod
from lightning_ssl.modules.backbones import Backbone
from lightning_ssl.modules.dino_head import DINOHead
from lightning_ssl.modules.gram_teacher import GramTeacher
from lightning_ssl.modules.masking import block_masking
from lightning_ssl.modules.momentum import make_teacher
from lightning_ssl.modules.vit import ViT
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


def _vit(backbone: nn.Module) -> ViT:
    """The backbone as the ViT iBOT and Gram anchoring need (their patch tokens)."""
    if not isinstance(backbone, ViT):
        raise ValueError(f"iBOT and Gram anchoring need a lightning_ssl.modules.vit.ViT, got {type(backbone).__name__}")
    return backbone


class DINO(MomentumMethod):
    """DINO, with DINOv2's and DINOv3's options (see the module docstring).

    Args:
        backbone: a ViT (``lightning_ssl.modules.vit.ViT``; needed for iBOT and Gram anchoring) or a CNN.
        hidden_dim: the DINO head's MLP width (2048).
        bottleneck_dim: the head's L2-normalized bottleneck (256).
        out_dim: K, the number of prototypes (65536 in DINO and DINOv2).
        norm_last_layer: unit-norm prototypes (True: more stable; DINO's ViT-S/16 recipe uses False).
        student_temp: tau_s (0.1).
        warmup_teacher_temp: tau_t at the start (0.04).
        teacher_temp: tau_t after the warm-up (0.04 - 0.07).
        warmup_teacher_temp_epochs: epochs of the linear tau_t warm-up (30).
        center_momentum: the EMA center's momentum (0.9); unused with Sinkhorn centering.
        num_global_crops: G, the global crops that come first in each batch (2).
        freeze_last_layer_epochs: epochs with the heads' last layers frozen (1).
        clip_grad: per-parameter gradient norm clip (3.0; None: off).
        weight_decay: weight decay of the decayed parameters (weights, not biases and norms) at the start (0.04),
            set by DINO whatever the optimizer's own default.
        weight_decay_end: its value at the end of a cosine schedule by optimizer step (0.4; None: constant).
        ibot_weight: weight of the iBOT loss (0: off; 1.0 in DINOv2); needs a ViT.
        mask_ratio: range of iBOT's block-mask ratios, spread over the masked crops ((0.1, 0.5)).
        mask_probability: fraction of the global crops that are masked (0.5).
        koleo_weight: weight of KoLeo on the student's CLS features (0: off; 0.1 in DINOv2).
        koleo_local: search KoLeo's neighbours within each process (True, as DINOv2) or the global batch.
        centering: ``"ema"`` (DINO's center) or ``"sinkhorn"`` (DINOv2's Sinkhorn-Knopp, 3 iterations over the
            global batch; for iBOT over the masked patches of all processes).
        ibot_separate_head: iBOT gets its own head (DINOv2's ViT-L/g recipes) instead of sharing the DINO head.
        ibot_out_dim: prototypes of the separate iBOT head (None: ``out_dim``).
        gram_weight: weight of DINOv3's Gram anchoring (0: off; 2.0 in DINOv3); needs a ViT.
        gram_start: optimizer step from which the Gram loss applies, when the Gram teacher (a snapshot of the EMA
            teacher's backbone) is taken; below 1, a fraction of the run (DINOv3: 1M of 1.2M iterations).
        gram_update_every: refresh the Gram teacher from the EMA teacher every this many steps after
            ``gram_start`` (DINOv3: 10,000); below 1, a fraction of the run; None: never.
        gram_max_updates: at most this many refreshes (DINOv3: 3; None: no limit).
        eval_teacher: ``embed`` with the teacher backbone (True, as the paper evaluates) or the student.
        momentum: the teacher EMA's momentum at the start (0.996; DINOv2 0.992 - 0.994).
        momentum_end: its value at the end of a cosine schedule (1.0).
        optimizer: the optimizer (AdamW).
        scheduler: the LR schedule by optimizer step (warmup + cosine).
    """

    head: DINOHead
    ibot_head: DINOHead | None
    gram: GramTeacher | None
    teacher_updates: Tensor

    def __init__(
        self,
        backbone: Backbone,
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
        centering: str = "ema",
        ibot_separate_head: bool = False,
        ibot_out_dim: int | None = None,
        gram_weight: float = 0.0,
        gram_start: float = 0,
        gram_update_every: float | None = None,
        gram_max_updates: int | None = None,
        eval_teacher: bool = True,
        momentum: float = 0.996,
        momentum_end: float = 1.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosineLR,
    ) -> None:
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
        if ibot_weight < 0 or koleo_weight < 0 or gram_weight < 0:
            raise ValueError(
                f"loss weights must be >= 0, got ibot {ibot_weight}, koleo {koleo_weight}, gram {gram_weight}"
            )
        if ibot_separate_head and ibot_weight == 0:
            raise ValueError("ibot_separate_head needs iBOT: set ibot_weight > 0 (DINOv2 uses 1.0)")
        if ibot_out_dim is not None and (ibot_out_dim < 1 or not ibot_separate_head):
            raise ValueError(f"ibot_out_dim ({ibot_out_dim}) must be >= 1 and needs ibot_separate_head=True")
        self.use_ibot = ibot_weight > 0
        if self.use_ibot:
            if not isinstance(backbone, ViT):
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
        self.koleo_local, self.gram_weight = koleo_local, gram_weight
        self.mask_ratio: tuple[float, float] = (mask_ratio[0], mask_ratio[1])
        self.mask_probability = mask_probability

        self.head = DINOHead(self.num_features, hidden_dim, bottleneck_dim, out_dim, norm_last_layer=norm_last_layer)
        self.teacher_backbone, self.teacher_head = make_teacher(self.backbone), make_teacher(self.head)
        for m in self.teacher_backbone.modules():  # the reference builds the teacher without dropout/drop-path
            if isinstance(m, nn.Dropout):
                m.p = 0.0
            elif hasattr(m, "drop_prob"):  # timm's DropPath
                m.drop_prob = 0.0  # type: ignore[assignment]  # a float on timm's DropPath, not a submodule
        self.ibot_head: DINOHead | None = None  # DINOv2's separate iBOT head, and its teacher
        self.teacher_ibot_head: DINOHead | None = None
        if ibot_separate_head:
            ibot_out_dim = ibot_out_dim or out_dim
            self.ibot_head = DINOHead(
                self.num_features, hidden_dim, bottleneck_dim, ibot_out_dim, norm_last_layer=norm_last_layer
            )
            self.teacher_ibot_head = make_teacher(self.ibot_head)
        self.dino_loss = DINOLoss(out_dim, student_temp, center_momentum, centering)
        self.ibot_loss = (
            IBOTPatchLoss(ibot_out_dim or out_dim, student_temp, center_momentum, centering) if self.use_ibot else None
        )
        self.gram = (
            GramTeacher(self.teacher_backbone, gram_start, gram_update_every, gram_max_updates)
            if gram_weight > 0
            else None
        )

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        pairs = [(self.backbone, self.teacher_backbone), (self.head, self.teacher_head)]
        if self.ibot_head is not None and self.teacher_ibot_head is not None:
            pairs.append((self.ibot_head, self.teacher_ibot_head))
        return pairs

    def trainable_modules(self) -> list[nn.Module]:
        return [self.backbone, self.head] + ([self.ibot_head] if self.ibot_head is not None else [])

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
    def _step(self) -> tuple[int, int]:
        """(optimizer steps done, the run's optimizer steps) for the Gram schedule; (n, 0) outside a Trainer."""
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 0
        return int(self.teacher_updates), total

    def _student_globals(self, x: Tensor, gram: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Student on the global crops (G*B, C, H, W) -> CLS features, and with iBOT (or Gram anchoring) the patch
        tokens (G*B, N, D) and the iBOT mask (G*B, N)."""
        if not (self.use_ibot or gram):
            return self.backbone(x), None, None
        vit = _vit(self.backbone)
        mask = None
        if self.use_ibot:
            grid = (x.shape[-2] // vit.patch_size, x.shape[-1] // vit.patch_size)
            mask = block_masking(len(x), grid, self.mask_ratio, self.mask_probability).to(x.device)
        tokens = vit.forward_tokens(x, mask=mask)
        return vit.pool(tokens), tokens[:, 1:], mask

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        views, _ = batch
        g = self.num_global_crops
        if len(views) < g:
            raise ValueError(f"DINO expects {g} global crops first (MultiCropViews), got {len(views)} views")
        x_global, local_views = torch.cat(views[:g]), views[g:]  # crops of one size are forwarded together
        tau_t = self.current_teacher_temp()

        with torch.no_grad():
            if self.use_ibot:
                teacher = _vit(self.teacher_backbone)
                t_tokens = teacher.forward_tokens(x_global)
                t_feat = teacher.pool(t_tokens)
            else:
                t_feat = self.teacher_backbone(x_global)  # (G*B, D)
            t_out = self.teacher_head(t_feat)  # (G*B, K)

        gram = self.gram is not None and self.gram.active(*self._step())
        s_feat, s_patches, mask = self._student_globals(x_global, gram)
        s_out = list(self.head(s_feat).chunk(g))
        if local_views:
            s_out += list(self.head(self.backbone(torch.cat(local_views))).chunk(len(local_views)))
        loss = dino = self.dino_loss(s_out, t_out.chunk(g), tau_t)
        self.log("train/dino_loss", dino)

        if self.ibot_loss is not None:  # iBOT
            if s_patches is None or mask is None:  # _student_globals gives both with iBOT
                raise RuntimeError("iBOT needs the student's patch tokens and their mask")
            s_patch_out = (self.ibot_head or self.head)(s_patches[mask])  # (M, K): masked patches only
            with torch.no_grad():
                t_head = self.teacher_ibot_head if self.teacher_ibot_head is not None else self.teacher_head
                t_patch_out = t_head(t_tokens[:, 1:][mask])
            ibot = self.ibot_loss(s_patch_out, t_patch_out, mask, tau_t)
            loss = loss + self.ibot_weight * ibot
            self.log("train/ibot_loss", ibot)
        if self.koleo_weight > 0:
            koleo = sum(koleo_loss(f, local=self.koleo_local) for f in s_feat.chunk(g))
            loss = loss + self.koleo_weight * koleo
            self.log("train/koleo_loss", koleo)
        if gram and self.gram is not None:  # the student's (iBOT-masked) patches against the Gram teacher's
            anchor = gram_loss(s_patches, self.gram.patches(x_global))
            loss = loss + self.gram_weight * anchor
            self.log("train/gram_loss", anchor)

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
            for head in [self.head] + ([self.ibot_head] if self.ibot_head is not None else []):
                for p in head.last_layer.parameters():
                    p.grad = None  # the optimizer skips it: no update, no weight decay, no moments

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        self._schedule_weight_decay()
        super().optimizer_step(*args, **kwargs)  # the teacher EMA follows the step
        if self.gram is not None and self.gram.due(*self._step()):
            self.gram.refresh(self.teacher_backbone, int(self.teacher_updates))  # DINOv3: after the EMA update

    # -- downstream -------------------------------------------------------------------------------------------
    def embed(self, x: Tensor) -> Tensor:
        return (self.teacher_backbone if self.eval_teacher else self.backbone)(x)

    @torch.no_grad()
    def attention_maps(self, x: Tensor) -> Tensor:
        """CLS -> patch self-attention of the last block of the (teacher) ViT: (B, heads, h, w)."""
        backbone = self.teacher_backbone if self.eval_teacher else self.backbone
        if not isinstance(backbone, ViT):
            raise ValueError(f"attention maps need a ViT backbone, got {type(backbone).__name__}")
        return backbone.last_attention(x)
