import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_ssl.callbacks import KNNMonitor
from lightning_ssl.metrics.knn import knn_accuracy, knn_predict


def test_knn_predict_hand_computed_weights():
    bank = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    q = torch.tensor([[1.0, 0.0]])
    scores = knn_predict(q, bank, labels, num_classes=2, k=2, temperature=0.5)
    # neighbours: bank 0 (cos 1) and bank 1 (cos 0.8); votes exp(1/0.5) for class 0, exp(0.8/0.5) for class 1
    torch.testing.assert_close(scores, torch.tensor([[torch.e**2, torch.e**1.6]]))


def test_knn_weighting_can_overrule_majority():
    bank = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]])
    labels = torch.tensor([0, 1, 1])
    q = torch.tensor([[1.0, 0.0]])
    # k=3: one vote exp(1/T) for class 0 against two votes exp(0.6/T) for class 1
    assert knn_predict(q, bank, labels, 2, k=3, temperature=0.1).argmax().item() == 0  # e^10 > 2 e^6
    assert knn_predict(q, bank, labels, 2, k=3, temperature=10.0).argmax().item() == 1  # e^.1 < 2 e^.06


def test_knn_separable_is_perfect_and_random_labels_near_chance():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 16, generator=g) * 5
    y = torch.arange(1000) % 5
    x = centers[y] + torch.randn(1000, 16, generator=g)
    acc = knn_accuracy(x[:200], y[:200], x[200:], y[200:], k=[1, 20])
    assert acc[1] == 1.0
    assert acc[20] == 1.0
    y_rand = torch.randint(0, 5, (1000,), generator=g)
    acc = knn_accuracy(x[:500], y_rand[:500], x[500:], y_rand[500:], k=20)[20]
    assert 0.1 < acc < 0.3


def test_knn_rejects_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        knn_predict(torch.randn(2, 3), torch.randn(4, 3), torch.zeros(4, dtype=torch.long), 2, temperature=0)
    with pytest.raises(ValueError, match="labels must lie"):
        knn_predict(torch.randn(2, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 5]), 3)
    with pytest.raises(ValueError, match="k must be"):
        KNNMonitor(k=0)


class _FixedFeatures(L.LightningModule):
    """validation_step returns the batch's (fixed) features, like a method's embed would."""

    num_features = 2

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        return {"features": x, "labels": y}


class _TwoLoaders(L.LightningDataModule):
    num_classes = 2

    def __init__(self, queries, q_labels, bank, bank_labels):
        super().__init__()
        self.q, self.b = TensorDataset(queries, q_labels), TensorDataset(bank, bank_labels)

    def val_dataloader(self):
        return [DataLoader(self.q, batch_size=3), DataLoader(self.b, batch_size=2)]


def test_knn_monitor_known_answer():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    bank_labels = torch.tensor([0, 0, 1, 1])
    queries = torch.tensor([[1.0, 0.05], [0.05, 1.0], [0.95, 0.0], [0.0, 0.8]])
    q_labels = torch.tensor([0, 1, 1, 1])  # the third query sits with class 0: 3 of 4 right
    monitor = KNNMonitor(k=[1, 2], temperature=0.1)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[monitor]
    )
    metrics = trainer.validate(
        _FixedFeatures(), datamodule=_TwoLoaders(queries, q_labels, bank, bank_labels), verbose=False
    )[0]
    assert metrics["val/knn_top1"] == pytest.approx(0.75)
    assert metrics["val/knn_top1_k2"] == pytest.approx(0.75)
