"""Data: SSD augmentations, the box-aware mapper and built-in datasets (registered on import by
``builtin``)."""

from . import builtin  # noqa: F401  (registers the built-in datasets)
from .dataset_mapper import SSDDatasetMapper
from .transforms import (
    PhotometricDistortion,
    RandomExpand,
    build_ssd_augmentation,
    ssd_augmentations,
)
from .voc_folder import register_voc_folder

__all__ = [
    "SSDDatasetMapper",
    "PhotometricDistortion",
    "RandomExpand",
    "build_ssd_augmentation",
    "ssd_augmentations",
    "register_voc_folder",
]
