"""Image-to-image retrieval on frozen features: recall@k and MAP@R (Musgrave et al., "A Metric Learning Reality
Check", ECCV 2020), by cosine similarity.

A retrieved item is relevant when it has the query's label. For a query with R relevant items in the database:

* recall@k: 1 if at least one of the k most similar items is relevant (the metric-learning "recall@k",
  Precision@1 for k = 1), averaged over queries;
* R-precision: the fraction of relevant items among the R most similar;
* MAP@R: (1/R) sum_{i<=R} P(i) * rel(i), with P(i) the precision among the first i and rel(i) whether the i-th
  item is relevant - average precision cut at R, which, unlike recall@1, rewards a whole well-clustered class.

Without a separate database the queries search each other, leaving themselves out (Musgrave et al.'s setting);
queries whose class has no other item are left out of every average (as pytorch-metric-learning does).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def retrieval_metrics(
    features: Tensor,
    labels: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    database: Tensor | None = None,
    database_labels: Tensor | None = None,
    chunk_size: int = 512,
) -> dict[str, float]:
    """Recall@k for each k, R-precision and MAP@R of cosine-similarity search, in [0, 1].

    Args:
        features: (N, D) query features.
        labels: (N,) query labels.
        ks: the k of recall@k, each >= 1.
        database: (M, D) features searched; None: the queries themselves, each query left out of its own search.
        database_labels: (M,) labels of ``database`` (required with it).
        chunk_size: queries scored at once (memory is chunk_size x M similarities).

    Returns:
        ``{"recall@k": ..., "r_precision": ..., "map@r": ..., "queries": number of queries scored}``.
    """
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {list(ks)}")
    if len(features) != len(labels):
        raise ValueError(f"{len(features)} query features but {len(labels)} labels")
    leave_one_out = database is None
    if database is None:
        database, database_labels = features, labels
    elif database_labels is None or len(database_labels) != len(database):
        raise ValueError("database_labels must give one label per database item")
    q = F.normalize(features.float(), dim=1)
    db = F.normalize(database.float(), dim=1)
    labels, database_labels = labels.long(), database_labels.long()
    num_classes = int(max(labels.max(), database_labels.max())) + 1
    relevant = torch.bincount(database_labels, minlength=num_classes)[labels] - int(leave_one_out)  # R per query
    depth = min(max(int(relevant.max()), max(ks)), len(db) - int(leave_one_out))
    recall = dict.fromkeys(ks, 0.0)
    r_precision = map_r = 0.0
    scored = 0
    for start in range(0, len(q), chunk_size):
        sim = q[start : start + chunk_size] @ db.T  # (n, M)
        n = len(sim)
        if leave_one_out:
            sim[torch.arange(n), torch.arange(start, start + n)] = -torch.inf
        hits = database_labels[sim.topk(depth, dim=1).indices] == labels[start : start + n, None]  # (n, depth)
        r = relevant[start : start + n]
        keep = r > 0
        hits, r = hits[keep], r[keep]
        scored += len(r)
        for k in ks:
            recall[k] += hits[:, :k].any(1).sum().item()
        within_r = torch.arange(1, depth + 1) <= r[:, None]  # (n, depth): the first R positions
        rel = hits & within_r
        precision_at_i = rel.cumsum(1) / torch.arange(1, depth + 1)
        r_precision += (rel.sum(1) / r).sum().item()
        map_r += ((precision_at_i * rel).sum(1) / r).sum().item()
    if scored == 0:
        raise ValueError("no query has another item of its class to find: retrieval needs classes with >= 2 items")
    out = {f"recall@{k}": recall[k] / scored for k in ks}
    out.update({"r_precision": r_precision / scored, "map@r": map_r / scored, "queries": float(scored)})
    return out


def retrieval_table(results: dict[str, float]) -> str:
    """A Markdown table of ``retrieval_metrics``' output."""
    keys = [k for k in results if k != "queries"]
    return "\n".join(
        [
            "| " + " | ".join(keys) + " |",
            "|" + "---|" * len(keys),
            "| " + " | ".join(f"{100 * results[k]:.2f}%" for k in keys) + " |",
        ]
    )
