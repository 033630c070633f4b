"""The KoLeo regularizer (Sablayrolles et al., "Spreading vectors for similarity search", ICLR 2019), as used
in DINOv2 (Oquab et al., 2023, sec. 4) on the student's CLS features of each global crop:

    x_i <- x_i / ||x_i||,   d_i = min_{j != i} ||x_i - x_j||,   loss = -(1/B) sum_i log(d_i + eps)

It is the Kozachenko-Leonenko entropy estimator (up to constants): minimizing it spreads the features
uniformly within the batch. As in DINOv2 (``KoLeoLoss`` of facebookresearch/dinov2) the neighbours are searched
within each process's batch (``local=True``, the default) and ``eps`` also sits inside the distance
(``PairwiseDistance(2, eps=1e-8)``: ||x_i - x_j + eps||). The per-process search makes the regularizer depend on
the number of GPUs; ``local=False`` searches the global batch instead (features gathered with gradients), which
gives the same loss and gradients on any number of processes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ssl.losses._utils import full_precision
from lightning_ssl.modules.distributed import gather, rank


@full_precision
def koleo_loss(x: Tensor, eps: float = 1e-8, local: bool = True) -> Tensor:
    """x: (B, D) features of this process. Returns the mean negative log distance of each row to its nearest
    neighbour among the rows of all processes (``local``: of this process only); at least 2 rows in all."""
    if x.ndim != 2:
        raise ValueError(f"KoLeo needs (B, D) features, got {tuple(x.shape)}")
    x = F.normalize(x.float(), dim=-1, eps=eps)
    others = x if local else gather(x)
    if others.shape[0] < 2:
        raise ValueError(f"KoLeo needs at least 2 rows to find neighbours, got {others.shape[0]}")
    offset = 0 if local else rank() * x.shape[0]
    with torch.no_grad():  # the nearest neighbour is an index: found without gradient, as in DINOv2
        dots = x @ others.T
        own = torch.arange(x.shape[0], device=x.device)
        dots[own, own + offset] = -2.0  # below any cosine: a row is not its own neighbour
        nearest = dots.argmax(dim=1)
    distances = F.pairwise_distance(x, others[nearest], p=2, eps=eps)
    return -torch.log(distances + eps).mean()


class KoLeoLoss(nn.Module):
    """``koleo_loss`` as a module: features (B, D) -> scalar.

    Args:
        eps: Added to the nearest-neighbour distance inside the log (1e-8 in DINOv2).
        local: Search the nearest neighbours within this process's batch (DINOv2 does); False: over the global
            batch, gathered with gradients.
    """

    def __init__(self, eps: float = 1e-8, local: bool = True) -> None:
        super().__init__()
        self.eps, self.local = eps, local

    def forward(self, x: Tensor) -> Tensor:
        return koleo_loss(x, self.eps, self.local)
