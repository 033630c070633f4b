"""CLIP's symmetric InfoNCE loss (Radford et al., "Learning Transferable Visual Models From Natural Language
Supervision", ICML 2021, fig. 3):

    logits = s * I @ T.T            I, T: L2-normalized image / text embeddings (N, D), s = exp(t) <= 100
    loss   = (CE(logits, arange(N)) + CE(logits.T, arange(N))) / 2

Under DDP both embeddings are gathered from all processes *with gradients* (``modules.distributed.gather``),
so every process sees all N = world size * B pairs as negatives. Two ways to lay out the logits:

- ``local_loss=True`` (open_clip's "local loss"): each process computes only the rows of its own B images
  against all N texts, and of its own B texts against all N images: two (B, N) matrices, linear in N per
  process. The per-process losses average (DDP) to the global loss.
- ``local_loss=False``: every process computes the full (N, N) matrix and the full global loss: quadratic
  in N. The gather's backward sums the W identical gradients and DDP divides by W, so both give exactly the
  gradients of one process that holds the whole batch (checked by a 2-process test).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ssl.losses._utils import full_precision
from lightning_ssl.modules.distributed import gather, rank


def clip_logits(
    image_emb: Tensor,
    text_emb: Tensor,
    logit_scale: Tensor | float,
    local_loss: bool = True,
    gather_distributed: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(logits_per_image, logits_per_text, targets)`` for local embeddings (B, D) of B matching pairs.

    ``logit_scale`` is the multiplier s (already exponentiated and clamped), a tensor to learn it. With
    ``local_loss`` both logit matrices are (B, N) and ``targets`` are the global indices of the local rows;
    without it they are (N, N) and ``targets = arange(N)``."""
    if image_emb.shape != text_emb.shape:
        raise ValueError(
            f"image and text embeddings must have the same shape, got {tuple(image_emb.shape)} "
            f"and {tuple(text_emb.shape)}"
        )
    image, text = F.normalize(image_emb.float(), dim=1), F.normalize(text_emb.float(), dim=1)
    all_image = gather(image) if gather_distributed else image  # (N, D)
    all_text = gather(text) if gather_distributed else text
    b, n = image.shape[0], all_image.shape[0]
    if local_loss:
        offset = rank() * b if n != b else 0
        targets = torch.arange(b, device=image.device) + offset
        return logit_scale * image @ all_text.T, logit_scale * text @ all_image.T, targets  # (B, N) each
    logits = logit_scale * all_image @ all_text.T  # (N, N)
    return logits, logits.T, torch.arange(n, device=image.device)


@full_precision
def clip_loss(
    image_emb: Tensor,
    text_emb: Tensor,
    logit_scale: Tensor | float,
    local_loss: bool = True,
    gather_distributed: bool = True,
) -> Tensor:
    """Symmetric InfoNCE between image i and text i of the (global) batch; inputs (B, D) are normalized here.
    ``logit_scale``: s = exp(t), the inverse temperature (CLIP initializes t = ln(1/0.07), clamps s at 100)."""
    if isinstance(logit_scale, Tensor):
        logit_scale = logit_scale.float()
    if not logit_scale > 0:
        raise ValueError(f"logit_scale must be > 0, got {float(logit_scale)}")
    per_image, per_text, targets = clip_logits(image_emb, text_emb, logit_scale, local_loss, gather_distributed)
    return (F.cross_entropy(per_image, targets) + F.cross_entropy(per_text, targets)) / 2


class CLIPLoss(nn.Module):
    """``clip_loss`` with its own learnable logit scale: s = exp(t), t initialized to ``ln(1 / temperature)``,
    s clamped at ``max_scale`` (the CLIP paper's 100).

    Args:
        temperature: Initial temperature, > 0; the logit scale starts at 1/temperature (0.07 in the paper).
        max_scale: Clamp of the logit scale (100 in the paper).
        learnable: Learn the logit scale (the paper does); False keeps it at 1/temperature.
        local_loss: Each process scores its own rows against the global batch's columns (OpenCLIP's
            ``local_loss``: same gradient, less memory); False: the full global logit matrix on every process.
        gather_distributed: Under DDP, gather the features of all processes with gradients (negatives from the
            global batch); a no-op on one process.
    """

    def __init__(
        self,
        temperature: float = 0.07,
        max_scale: float = 100.0,
        learnable: bool = True,
        local_loss: bool = True,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        if not temperature > 0 or not max_scale > 0:
            raise ValueError(f"temperature and max_scale must be > 0, got {temperature} and {max_scale}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)), requires_grad=learnable)
        self.max_scale, self.local_loss, self.gather_distributed = max_scale, local_loss, gather_distributed

    def scale(self) -> Tensor:
        return self.log_scale.exp().clamp(max=self.max_scale)

    @torch.no_grad()
    def clamp_(self) -> None:
        """Keep the parameter itself in [0, ln max_scale] (open_clip does this after every optimizer step), so
        it cannot drift far above the clamp where its gradient is zero."""
        self.log_scale.clamp_(0, math.log(self.max_scale))

    def forward(self, image_emb: Tensor, text_emb: Tensor) -> Tensor:
        return clip_loss(image_emb, text_emb, self.scale(), self.local_loss, self.gather_distributed)
