"""Data: SSD augmentations, the box-aware mapper and builtin datasets (BCCD and the generated
digits, registered on import)."""

from . import builtin, digits, small_digits  # noqa: F401  (register datasets)
from .dataset_mapper import SSDDatasetMapper
from .transforms import PhotometricDistortion, RandomExpand, build_ssd_augmentation

__all__ = ["SSDDatasetMapper", "PhotometricDistortion", "RandomExpand", "build_ssd_augmentation"]
