"""Evaluation protocols on frozen or fine-tuned backbones."""

from lightning_ssl.eval.knn import knn_accuracy, knn_predict

__all__ = ["knn_accuracy", "knn_predict"]
