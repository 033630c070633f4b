"""Data: multi-view transforms and presets, datasets, datamodules."""

from lightning_ssl.data.corpus import TextCorpusDataModule, read_documents
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
    ViewSpec,
    augmented_view,
    eval_transform,
)

__all__ = [
    "BYOLViews",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "ClassifierViews",
    "EmojiDataModule",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "ImageTextDataModule",
    "ImageTextDataset",
    "MNISTDataModule",
    "MedicalViews",
    "MultiBandDataModule",
    "MultiBandDataset",
    "MultiBandViews",
    "MultiCropViews",
    "MultiViewTransform",
    "RandomBrightnessContrast",
    "STL10DataModule",
    "SatelliteViews",
    "SimCLRViews",
    "StreamingImageDataModule",
    "SyntheticDataModule",
    "TextClassificationDataModule",
    "TextCorpusDataModule",
    "ViewPreset",
    "ViewSpec",
    "augmented_view",
    "band_statistics",
    "eval_transform",
    "load_emoji",
    "optimize_images",
    "read_documents",
    "read_image_text_table",
    "read_tiff",
]
