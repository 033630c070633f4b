"""2-D embedding plots (t-SNE from scikit-learn; UMAP when ``umap-learn`` is installed), coloured by label."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def embed_2d(features: Tensor, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, 2) with t-SNE (cosine geometry: features are L2-normalized first) or UMAP."""
    x = torch.nn.functional.normalize(features.float(), dim=1).numpy()
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(
            n_components=2, init="pca", random_state=seed, perplexity=min(30.0, (len(x) - 1) / 3)
        ).fit_transform(x)
    if method == "umap":
        try:
            import umap
        except ImportError as e:
            raise ImportError("UMAP plots need the umap-learn package (pip install umap-learn)") from e
        return umap.UMAP(n_components=2, random_state=seed).fit_transform(x)
    raise ValueError(f"method must be 'tsne' or 'umap', got {method!r}")


def embedding_plot(
    features: Tensor,
    labels: Tensor,
    path: str | Path,
    method: str = "tsne",
    max_points: int = 2000,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    seed: int = 0,
) -> Path:
    """Scatter plot of a 2-D embedding of (a random subset of) ``features``, one colour per label; saves a PNG."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: the process's backend (a notebook's inline one) is left alone

    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(features), generator=g)[:max_points]
    xy = embed_2d(features[idx], method, seed)
    y = labels[idx].numpy()
    fig = Figure(figsize=(7, 6), dpi=120)
    ax = fig.subplots()
    classes = np.unique(y)
    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    for i, c in enumerate(classes):
        m = y == c
        name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
        ax.scatter(xy[m, 0], xy[m, 1], s=4, color=cmap(i % cmap.N), label=name)
    ax.set_xticks([]), ax.set_yticks([])
    name = {"tsne": "t-SNE", "umap": "UMAP"}.get(method, method)
    ax.set_xlabel(f"{name} 1"), ax.set_ylabel(f"{name} 2")
    ax.set_title(title or f"{method.upper()} of {len(idx)} embeddings")
    if len(classes) <= 20:
        ax.legend(markerscale=3, fontsize=7, loc="best", frameon=False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
