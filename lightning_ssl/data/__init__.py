"""Data: multi-view transforms and presets, datasets, datamodules."""

from lightning_ssl.data.datamodules import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    ImageDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    STL10DataModule,
    SyntheticDataModule,
)
from lightning_ssl.data.emoji import EmojiDataModule, load_emoji
from lightning_ssl.data.text import TextClassificationDataModule
from lightning_ssl.data.transforms import (
    ClassifierViews,
    MedicalViews,
    MultiViewTransform,
    SatelliteViews,
    SimCLRViews,
    ViewPreset,
    augmented_view,
    eval_transform,
)

__all__ = [
    "CIFAR10DataModule", "ClassifierViews", "EmojiDataModule", "load_emoji", "CIFAR100DataModule", "FashionMNISTDataModule", "ImageDataModule", "ImageFolderDataModule",
    "MNISTDataModule", "STL10DataModule", "SyntheticDataModule", "MedicalViews", "MultiViewTransform",
    "SatelliteViews", "SimCLRViews", "TextClassificationDataModule", "ViewPreset", "augmented_view", "eval_transform",
]
