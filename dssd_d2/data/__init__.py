"""Data: SSD augmentations, the box-aware mapper and builtin datasets (BCCD and the generated
digits, registered on import)."""

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
