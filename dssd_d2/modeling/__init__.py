from . import backbone  # noqa: F401  (registers backbones)
from .anchor_generator import SSDAnchorGenerator
from .heads import (
    PREDICTION_MODULE_REGISTRY,
    PREDICTOR_REGISTRY,
    SSD_HEAD_REGISTRY,
    SSDHead,
    build_ssd_head,
)
from .meta_arch import SSD

__all__ = [
    "SSD",
    "SSDAnchorGenerator",
    "SSDHead",
    "SSD_HEAD_REGISTRY",
    "PREDICTION_MODULE_REGISTRY",
    "PREDICTOR_REGISTRY",
    "build_ssd_head",
]
