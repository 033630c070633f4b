"""Image retrieval on frozen features: recall@k, R-precision and MAP@R."""

import numpy as np
import pytest
import torch

from lightning_ssl.metrics.retrieval import retrieval_metrics


# --- retrieval --------------------------------------------------------------------------------------------------
def _pml_reference(features: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """recall@1, R-precision and MAP@R transcribed from pytorch-metric-learning
    (``src/pytorch_metric_learning/utils/accuracy_calculator.py``: ``precision_at_k``, ``r_precision``,
    ``mean_average_precision`` with ``at_r=True``), the references being the queries without themselves."""
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    counts = {c: int((labels == c).sum()) for c in np.unique(labels)}
    max_r = max(counts.values()) - 1
    knn_labels = labels[np.argsort(-sim, axis=1, kind="stable")[:, :max_r]]
    rel_mask = np.zeros_like(knn_labels, dtype=bool)
    r = np.array([counts[c] - 1 for c in labels])
    for i in range(len(labels)):
        rel_mask[i, : r[i]] = True
    same = knn_labels == labels[:, None]
    eq = same * rel_mask
    precision_at_ks = np.cumsum(eq, 1) * eq / np.arange(1, max_r + 1)
    return {
        "recall@1": float(same[:, 0].mean()),
        "r_precision": float(((same * rel_mask).sum(1) / rel_mask.sum(1)).mean()),
        "map@r": float(((precision_at_ks * rel_mask).sum(1) / r).mean()),
    }


def test_retrieval_matches_pytorch_metric_learning_and_a_hand_example():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.randn(60, 5, generator=g) + 1.5 * torch.randn(3, 5, generator=g)[y]
    ours = retrieval_metrics(x, y, ks=(1, 5), chunk_size=16)
    ref = _pml_reference(x.double().numpy(), y.numpy())
    for k, v in ref.items():
        assert ours[k] == pytest.approx(v, abs=1e-6), k
    # 1-D points: query 0 (class a) finds 1 (a), then 3 (b), then 2 (a): R = 2, AP@R = (1/1 + 0) / 2
    pts = torch.tensor([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [0.95, 0.31]])
    labels = torch.tensor([0, 0, 0, 1])
    r = retrieval_metrics(pts[:1], labels[:1], ks=(1, 2), database=pts[1:], database_labels=labels[1:])
    assert r["recall@1"] == 1.0
    assert r["map@r"] == pytest.approx(0.5)
    assert r["r_precision"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="classes with >= 2 items"):
        retrieval_metrics(pts[:2], torch.tensor([0, 1]))
