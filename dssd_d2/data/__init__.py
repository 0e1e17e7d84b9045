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

__all__ = [
    "SSDDatasetMapper",
    "PhotometricDistortion",
    "RandomExpand",
    "build_ssd_augmentation",
    "ssd_augmentations",
]
