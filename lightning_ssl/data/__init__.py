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
from lightning_ssl.data.multiband import MultiBandDataModule, MultiBandDataset, band_statistics, read_tiff
from lightning_ssl.data.streaming import StreamingImageDataModule, optimize_images
from lightning_ssl.data.text import TextClassificationDataModule
from lightning_ssl.data.transforms import (
    BYOLViews,
    ClassifierViews,
    MedicalViews,
    MultiBandViews,
    MultiCropViews,
    MultiViewTransform,
    RandomBrightnessContrast,
    SatelliteViews,
    SimCLRViews,
    ViewPreset,
    augmented_view,
    eval_transform,
)

__all__ = [
    "augmented_view",
    "BYOLViews",
    "CIFAR100DataModule",
    "CIFAR10DataModule",
    "ClassifierViews",
    "EmojiDataModule",
    "eval_transform",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "ImageTextDataModule",
    "ImageTextDataset",
    "load_emoji",
    "MedicalViews",
    "MNISTDataModule",
    "MultiBandDataModule",
    "MultiBandDataset",
    "MultiBandViews",
    "MultiCropViews",
    "MultiViewTransform",
    "optimize_images",
    "read_documents",
    "RandomBrightnessContrast",
    "band_statistics",
    "read_tiff",
    "read_image_text_table",
    "SatelliteViews",
    "SimCLRViews",
    "STL10DataModule",
    "StreamingImageDataModule",
    "SyntheticDataModule",
    "TextClassificationDataModule",
    "TextCorpusDataModule",
    "ViewPreset",
]
