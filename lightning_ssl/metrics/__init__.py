"""Metrics and pictures of representations, as plain functions (no Lightning): weighted kNN, zero-shot
classification and retrieval recall for image-text models, image retrieval (recall@k, MAP@R), 2-D embedding
plots, patch-feature locality. Methods and callbacks use them during training; ``lightning_ssl.eval`` builds its
protocols on them."""

from lightning_ssl.metrics.knn import knn_accuracy, knn_predict
from lightning_ssl.metrics.patches import patch_similarity_stats
from lightning_ssl.metrics.plots import embed_2d, embedding_plot
from lightning_ssl.metrics.retrieval import retrieval_metrics
from lightning_ssl.metrics.zeroshot import (
    DEFAULT_TEMPLATES,
    ImageIndex,
    clip_embedding_plot,
    encode_images,
    encode_texts,
    index_images,
    recall_at_k,
    retrieve,
    zero_shot_accuracy,
    zero_shot_classifier,
    zero_shot_classify,
)

__all__ = [
    "DEFAULT_TEMPLATES",
    "ImageIndex",
    "clip_embedding_plot",
    "embed_2d",
    "embedding_plot",
    "encode_images",
    "encode_texts",
    "index_images",
    "knn_accuracy",
    "knn_predict",
    "patch_similarity_stats",
    "recall_at_k",
    "retrieval_metrics",
    "retrieve",
    "zero_shot_accuracy",
    "zero_shot_classifier",
    "zero_shot_classify",
]
