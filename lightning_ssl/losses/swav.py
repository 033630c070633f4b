"""SwAV's swapped prediction with Sinkhorn-Knopp codes (Caron et al., "Unsupervised Learning of Visual Features by
Contrasting Cluster Assignments", NeurIPS 2020, sec. 3.1 and alg. 1).

    scores_v = z_v C^T                      (B, K): L2-normalized embeddings of crop v against K unit prototypes
    q_a = sinkhorn(scores_a)                (B, K) codes of the crops used for assignment (the global crops)
    loss = mean_a mean_{v != a} mean_b  -sum_k q_a[b, k] log softmax(scores_v[b] / tau)_k      tau = 0.1

``sinkhorn`` (the paper's eq. 3, its appendix A.1 code): Q = exp(scores / eps)^T is scaled to a transport plan
between the B samples and the K prototypes with uniform marginals by alternately normalizing rows (each prototype
gets 1/K of the mass) and columns (each sample 1/B), 3 iterations, eps = 0.05; then each column is a code.
Under DDP the plan covers the global batch: the sum over all entries and the row sums are all-reduced, as in the
reference's ``distributed_sinkhorn``; columns are local. Codes are computed without gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ssl.losses._utils import full_precision
from lightning_ssl.modules.distributed import all_reduce_sum, is_distributed


def _check(epsilon: float, iterations: int) -> None:
    if not epsilon > 0:
        raise ValueError(f"sinkhorn epsilon must be > 0, got {epsilon}")
    if iterations < 1:
        raise ValueError(f"sinkhorn iterations must be >= 1, got {iterations}")


@torch.no_grad()
@full_precision
def sinkhorn(scores: Tensor, epsilon: float = 0.05, iterations: int = 3, gather_distributed: bool = True) -> Tensor:
    """Codes (B, K) for ``scores`` (B, K) of this process's samples, balanced over the global batch: each row of the
    result sums to 1 (a soft assignment), and over all processes' samples every prototype gets an equal share."""
    _check(epsilon, iterations)
    reduce = all_reduce_sum if gather_distributed else (lambda t: t)
    scores = scores.detach().float()
    top = scores.max() if scores.numel() else scores.new_tensor(float("-inf"))  # a process may bring no rows
    if gather_distributed and is_distributed():  # a common shift keeps exp() finite; the plan does not change
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
    q = torch.exp((scores - top) / epsilon).T  # (K, B)
    k = q.shape[0]
    n = reduce(q.new_tensor(float(q.shape[1])))  # samples over all processes
    q /= reduce(q.sum())
    for _ in range(iterations):
        q /= reduce(q.sum(dim=1, keepdim=True))  # rows: every prototype gets 1/K of the mass
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # columns: every sample gets 1/N
        q /= n
    return (q * n).T


@full_precision
def swav_loss(scores: Sequence[Tensor], codes: Sequence[Tensor], temperature: float = 0.1) -> Tensor:
    """Swapped prediction: the codes of crop a (``codes[a]``, for the first A crops) are predicted from every other
    crop's scores (``scores``: V tensors (B, K) of z . c). Mean over the V - 1 predicting crops and the A codes."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 1 <= len(codes) <= len(scores) or len(scores) < 2:
        raise ValueError(
            f"need at least 2 crops and 1 <= assigned crops <= crops, got {len(codes)} codes for {len(scores)} crops"
        )
    logp = [F.log_softmax(s.float() / temperature, dim=1) for s in scores]
    total = scores[0].new_zeros((), dtype=torch.float32)
    for a, q in enumerate(codes):
        q = q.detach().float()
        total = total + sum(-(q * logp[v]).sum(dim=1).mean() for v in range(len(scores)) if v != a) / (len(scores) - 1)
    return total / len(codes)


class SwAVLoss(nn.Module):
    """``sinkhorn`` on the assigned crops' scores, then ``swav_loss`` (no queue; the method adds one).

    Args:
        temperature: Softmax temperature of the predicted assignments, > 0 (0.1 in the paper).
        epsilon: Entropy regularization of the Sinkhorn-Knopp codes, > 0 (0.05 in the paper).
        iterations: Sinkhorn-Knopp iterations (3 in the paper).
        num_assigned: The first crops (the global ones) whose codes are predicted from the others (2 in the
            paper).
    """

    def __init__(
        self, temperature: float = 0.1, epsilon: float = 0.05, iterations: int = 3, num_assigned: int = 2
    ) -> None:
        super().__init__()
        _check(epsilon, iterations)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.epsilon, self.iterations, self.num_assigned = (
            temperature,
            epsilon,
            iterations,
            num_assigned,
        )

    def forward(self, scores: Sequence[Tensor]) -> Tensor:
        codes = [sinkhorn(s, self.epsilon, self.iterations) for s in scores[: self.num_assigned]]
        return swav_loss(scores, codes, self.temperature)
