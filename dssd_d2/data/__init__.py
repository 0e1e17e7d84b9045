"""Data: SSD augmentations, the box-aware mapper and builtin datasets (registered on import)."""

from . import builtin  # noqa: F401  (registers datasets)
from .dataset_mapper import SSDDatasetMapper
from .transforms import PhotometricDistortion, RandomExpand, build_ssd_augmentation

__all__ = ["SSDDatasetMapper", "PhotometricDistortion", "RandomExpand", "build_ssd_augmentation"]
