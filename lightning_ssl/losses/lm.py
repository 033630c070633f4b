"""Token-level cross-entropy for language models (next-token, masked-token, span targets).

    loss = sum_i CE(logits_i, target_i) / (number of scored tokens)       targets equal to ``ignore_index`` skipped

Under DDP the denominator is the number of scored tokens of *all* processes divided by their number, so that
DDP's gradient averaging gives exactly the gradient of the global token mean. That matters for BERT, where each
process masks a different number of tokens (a mean of per-process means would weight a token of a process with
few masked tokens more); for packed GPT and T5 batches the counts are equal anyway. The loss each process reports
is its share: their mean over processes is the global token mean.
"""

from __future__ import annotations

import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from lightning_ssl.losses._utils import full_precision

IGNORE_INDEX = -100


@full_precision
def token_cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean cross-entropy over the scored tokens of all processes.

    Args:
        logits: (..., V) scores, any leading shape.
        targets: (...) token ids, the same leading shape; ``ignore_index`` where nothing is scored.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} do not match")
    total = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=ignore_index, reduction="sum"
    )
    count = (targets != ignore_index).sum().float()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        count = count.clone()
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return total / count.clamp_min(1.0)
