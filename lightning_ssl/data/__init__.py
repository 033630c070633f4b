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
from lightning_ssl.data.corpus import TextCorpusDataModule, read_documents
from lightning_ssl.data.emoji import EmojiDataModule, load_emoji
from lightning_ssl.data.image_text import ImageTextDataModule, ImageTextDataset, read_image_text_table
from lightning_ssl.data.text import TextClassificationDataModule
from lightning_ssl.data.transforms import (
    ClassifierViews,
    MedicalViews,
    MultiCropViews,
    MultiViewTransform,
    SatelliteViews,
    SimCLRViews,
    ViewPreset,
    augmented_view,
    eval_transform,
)

__all__ = [
    "augmented_view", "CIFAR100DataModule", "CIFAR10DataModule", "ClassifierViews", "EmojiDataModule",
    "eval_transform", "FashionMNISTDataModule", "ImageDataModule", "ImageFolderDataModule", "ImageTextDataModule",
    "ImageTextDataset", "load_emoji", "MedicalViews", "MNISTDataModule", "MultiCropViews", "MultiViewTransform",
    "read_documents", "read_image_text_table", "SatelliteViews", "SimCLRViews", "STL10DataModule",
    "SyntheticDataModule", "TextClassificationDataModule", "TextCorpusDataModule", "ViewPreset",
]
