"""Evaluation protocols on frozen or fine-tuned backbones."""

from lightning_ssl.eval.attentive import AttentiveProbe, attentive_probe, train_attentive_probe
from lightning_ssl.eval.dense import DenseProbe, dense_probe, segmentation_scores, train_dense_probe
from lightning_ssl.eval.export import export_backbone
from lightning_ssl.eval.features import extract_features, extract_patch_features
from lightning_ssl.eval.finetune import Classifier
from lightning_ssl.eval.linear import few_shot, linear_probe, sample_few_shot, train_linear_probe
from lightning_ssl.metrics.knn import knn_accuracy, knn_predict
from lightning_ssl.metrics.plots import embedding_plot
from lightning_ssl.metrics.retrieval import retrieval_metrics
from lightning_ssl.metrics.zeroshot import (
    clip_embedding_plot,
    recall_at_k,
    retrieve,
    zero_shot_accuracy,
    zero_shot_classify,
)

__all__ = [
    "AttentiveProbe",
    "Classifier",
    "DenseProbe",
    "attentive_probe",
    "clip_embedding_plot",
    "dense_probe",
    "embedding_plot",
    "export_backbone",
    "extract_features",
    "extract_patch_features",
    "few_shot",
    "knn_accuracy",
    "knn_predict",
    "linear_probe",
    "recall_at_k",
    "retrieval_metrics",
    "retrieve",
    "sample_few_shot",
    "segmentation_scores",
    "train_attentive_probe",
    "train_dense_probe",
    "train_linear_probe",
    "zero_shot_accuracy",
    "zero_shot_classify",
]
