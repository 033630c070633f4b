"""Evaluating an image-text model (CLIP; Radford et al., 2021, sec. 3.1): zero-shot classification from
class names and prompt templates, retrieval with recall@K, and a joint embedding plot.

Works with any ``model`` that has ``encode_image(images (B, C, H, W)) -> (B, D)`` and
``encode_text(list[str]) -> (B, D)`` (L2-normalized; normalized here again to be safe), e.g.
``lightning_ssl.methods.CLIP``. In a notebook::

    probs = zero_shot_classify(model, images, ["dog", "cat", "car"])      # (N, 3)
    scores, idx = retrieve(model, "a red heart", k=5, images=images)     # the 5 best images
    index = index_images(model, images); scores, ids = index.search("a red heart", k=5)   # encode once, search often

``model`` may also be a pretrained Hugging Face CLIP (``modules.pretrained.HFCLIP``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "{}")


def _batched(fn, items, batch_size: int) -> Tensor:
    return torch.cat(
        [F.normalize(fn(items[i : i + batch_size]).float(), dim=-1) for i in range(0, len(items), batch_size)]
    )


def _device(model) -> torch.device:
    p = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return p.device if p is not None else torch.device("cpu")


@contextmanager
def _eval_mode(model):
    """Evaluate with BatchNorm running statistics and no dropout, then restore the model's mode."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


@torch.no_grad()
def encode_images(model, images: Tensor, batch_size: int = 256) -> Tensor:
    """(N, C, H, W) -> normalized (N, D) on the CPU, in batches on the model's device, in eval mode."""
    dev = _device(model)
    with _eval_mode(model):
        return _batched(lambda x: model.encode_image(x.to(dev)), images, batch_size).cpu()


@torch.no_grad()
def encode_texts(model, texts: Sequence[str], batch_size: int = 256) -> Tensor:
    """list of N strings -> normalized (N, D) on the CPU, in eval mode."""
    with _eval_mode(model):
        return _batched(lambda t: model.encode_text(list(t)), list(texts), batch_size).cpu()


@torch.no_grad()
def zero_shot_classifier(model, class_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> Tensor:
    """(C, D) class embeddings: for each class the normalized mean of its normalized prompt embeddings
    (the prompt ensemble of CLIP sec. 3.1.4). A template is a format string with one ``{}``."""
    if not class_names or not templates:
        raise ValueError("zero-shot classification needs class names and at least one template")
    prompts = [t.format(c) for c in class_names for t in templates]
    emb = encode_texts(model, prompts).view(len(class_names), len(templates), -1)  # (C, T, D)
    return F.normalize(emb.mean(1), dim=-1)


def _image_embeddings(model, images: Tensor | None, image_embeddings: Tensor | None) -> Tensor:
    """L2-normalized image embeddings (N, D): the given ones, else ``images`` encoded by ``model``."""
    if image_embeddings is not None:
        return F.normalize(image_embeddings.float(), dim=-1)
    if images is None:
        raise ValueError("give images or their image_embeddings")
    return encode_images(model, images)


@torch.no_grad()
def zero_shot_classify(
    model,
    images: Tensor | None,
    labels: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    image_embeddings: Tensor | None = None,
) -> Tensor:
    """Class probabilities (N, C) of ``images`` (or precomputed ``image_embeddings``) over the class names
    ``labels``: softmax of the model's logit scale (100 if it has none) times cosine similarity."""
    classes = zero_shot_classifier(model, labels, templates)
    img = _image_embeddings(model, images, image_embeddings)
    scale = float(getattr(model, "logit_scale", 100.0))
    return (scale * img @ classes.T).softmax(-1)


@torch.no_grad()
def zero_shot_accuracy(
    model,
    images: Tensor | None,
    targets: Tensor,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    image_embeddings: Tensor | None = None,
    topk: Sequence[int] = (1, 5),
) -> dict[int, float]:
    """Top-k zero-shot accuracy (in [0, 1]) for each k in ``topk`` (k larger than the class count is skipped)."""
    probs = zero_shot_classify(model, images, class_names, templates, image_embeddings)
    ranked = probs.topk(min(max(topk), probs.shape[1]), dim=1).indices  # (N, k)
    hit = ranked == targets.view(-1, 1).to(ranked.device)
    return {k: hit[:, :k].any(1).float().mean().item() for k in topk if k <= probs.shape[1]}


@torch.no_grad()
def recall_at_k(
    queries: Tensor, targets: Tensor, ks: Sequence[int] = (1, 5, 10), chunk_size: int = 1024
) -> dict[int, float]:
    """Retrieval recall@K: the fraction of queries (N, D) whose own target (row i of ``targets`` (N, D)) is
    among the K most similar targets (cosine). Ties count in the query's favour. Chance is K / N."""
    if queries.shape != targets.shape:
        raise ValueError(
            f"queries and targets must pair up row by row, got {tuple(queries.shape)} and {tuple(targets.shape)}"
        )
    q, t = F.normalize(queries.float(), dim=1), F.normalize(targets.float(), dim=1)
    ranks = []
    for start in range(0, len(q), chunk_size):
        sim = q[start : start + chunk_size] @ t.T  # (n, N)
        own = sim[torch.arange(len(sim)), torch.arange(start, start + len(sim))]
        ranks.append((sim > own[:, None]).sum(1))  # how many targets beat the right one
    rank = torch.cat(ranks)
    return {k: (rank < k).float().mean().item() for k in ks}


@torch.no_grad()
def retrieve(
    model,
    query_text: str | Sequence[str],
    k: int = 5,
    images: Tensor | None = None,
    image_embeddings: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The ``k`` images most similar to each text query: ``(scores, indices)``, each (Q, k), or (k,) for one
    string. Give ``images`` (N, C, H, W) or their precomputed normalized ``image_embeddings`` (N, D)."""
    if images is None and image_embeddings is None:
        raise ValueError("retrieve needs images or image_embeddings to search")
    single = isinstance(query_text, str)
    text = encode_texts(model, [query_text] if isinstance(query_text, str) else list(query_text))
    img = _image_embeddings(model, images, image_embeddings)
    scores, idx = (text @ img.T).topk(min(k, len(img)), dim=1)
    return (scores[0], idx[0]) if single else (scores, idx)


class ImageIndex:
    """Normalized image embeddings of a collection, searchable by text (``index.search("a red heart", k=5)``) or
    by image (``index.search_image(x)``). Built with ``index_images``; ``save`` / ``ImageIndex.load`` keep the
    embeddings (and any ids) so a collection is encoded once.

    Args:
        model: The model that embeds texts (and images) in the shared space (a ``CLIP`` or ``HFCLIP``).
        embeddings: L2-normalized image embeddings (N, D).
        ids: One id per image (a path, a name, ...); None: the row indices.
    """

    def __init__(self, model, embeddings: Tensor, ids: Sequence | None = None) -> None:
        self.model, self.embeddings = model, F.normalize(embeddings.float(), dim=-1)
        self.ids = list(ids) if ids is not None else list(range(len(embeddings)))
        if len(self.ids) != len(self.embeddings):
            raise ValueError(f"{len(self.ids)} ids for {len(self.embeddings)} embeddings")

    def __len__(self) -> int:
        return len(self.embeddings)

    def _top(self, queries: Tensor, k: int) -> tuple[Tensor, list]:
        scores, idx = (queries @ self.embeddings.T).topk(min(k, len(self)), dim=1)
        return scores, [[self.ids[i] for i in row] for row in idx.tolist()]

    def search(self, query: str | Sequence[str], k: int = 5) -> tuple[Tensor, list]:
        """Cosine scores (Q, k) and the ids of the ``k`` best images for each text query (one string: (k,), ids)."""
        single = isinstance(query, str)
        scores, ids = self._top(encode_texts(self.model, [query] if isinstance(query, str) else list(query)), k)
        return (scores[0], ids[0]) if single else (scores, ids)

    def search_image(self, images: Tensor, k: int = 5) -> tuple[Tensor, list]:
        return self._top(encode_images(self.model, images), k)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        torch.save({"embeddings": self.embeddings, "ids": self.ids}, path)
        return path

    @classmethod
    def load(cls, model, path: str | Path) -> ImageIndex:
        state = torch.load(path, weights_only=True)
        return cls(model, state["embeddings"], state["ids"])


@torch.no_grad()
def index_images(model, images: Tensor | Iterable, ids: Sequence | None = None, batch_size: int = 256) -> ImageIndex:
    """Encode a collection once for text-to-image search: ``images`` (N, C, H, W), or an iterable of image batches
    or ``(images, ...)`` tuples (e.g. a DataLoader)."""
    if isinstance(images, Tensor):
        return ImageIndex(model, encode_images(model, images, batch_size), ids)
    parts = [encode_images(model, b[0] if isinstance(b, (list, tuple)) else b, batch_size) for b in images]
    return ImageIndex(model, torch.cat(parts), ids)


def clip_embedding_plot(
    image_emb: Tensor,
    text_emb: Tensor,
    labels: Tensor,
    path: str | Path,
    method: str = "tsne",
    class_names: Sequence[str] | None = None,
    max_points: int = 1000,
    seed: int = 0,
    title: str | None = None,
) -> Path:
    """One t-SNE/UMAP of image (dots) and text (crosses) embeddings together, coloured by class, with a thin
    line joining a few matching pairs; saves a PNG. Labels -1 (none) are drawn grey."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: the process's backend (a notebook's inline one) is left alone

    from lightning_ssl.metrics.plots import embed_2d

    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(image_emb), generator=g)[:max_points]
    n = len(idx)
    xy = embed_2d(torch.cat([image_emb[idx], text_emb[idx]]), method, seed)
    img_xy, txt_xy, y = xy[:n], xy[n:], labels[idx].cpu().numpy()
    fig = Figure(figsize=(8, 7), dpi=120)
    ax = fig.subplots()
    classes = np.unique(y)
    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    for i, c in enumerate(classes):
        m = y == c
        color = "0.6" if c < 0 else cmap(i % cmap.N)
        name = (
            class_names[c]
            if class_names is not None and 0 <= c < len(class_names)
            else ("unlabelled" if c < 0 else str(c))
        )
        ax.scatter(img_xy[m, 0], img_xy[m, 1], s=6, color=color, marker="o", label=name)
        ax.scatter(txt_xy[m, 0], txt_xy[m, 1], s=14, color=color, marker="x", linewidths=0.8)
    for j in range(min(n, 40)):  # a few pairs: how far apart the two modalities sit
        ax.plot([img_xy[j, 0], txt_xy[j, 0]], [img_xy[j, 1], txt_xy[j, 1]], color="0.7", linewidth=0.4, zorder=0)
    ax.set_xticks([]), ax.set_yticks([])
    name = {"tsne": "t-SNE", "umap": "UMAP"}.get(method, method)
    ax.set_xlabel(f"{name} 1"), ax.set_ylabel(f"{name} 2")
    ax.set_title(title or f"{method.upper()} of {n} images (o) and their captions (x)")
    if len(classes) <= 20:
        ax.legend(markerscale=2, fontsize=7, loc="best", frameon=False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
