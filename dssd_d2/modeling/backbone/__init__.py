"""Backbones of the SSD family, registered in Detectron2's BACKBONE_REGISTRY."""

from .layers import L2Norm
from .vgg import VGGSSD, build_vgg_ssd_backbone

__all__ = ["L2Norm", "VGGSSD", "build_vgg_ssd_backbone"]

from .dsod import DSOD, build_dsod_backbone  # noqa: E402

__all__ += ["DSOD", "build_dsod_backbone"]

from .resnet import ResNetSSD, build_resnet_ssd_backbone  # noqa: E402
from .dssd import DSSDBackbone, build_dssd_backbone  # noqa: E402

__all__ += ["ResNetSSD", "build_resnet_ssd_backbone", "DSSDBackbone", "build_dssd_backbone"]

from .tiny_dsod import TinyDSOD, build_tiny_dsod_backbone  # noqa: E402
from .mobilenet import MobileNetV3SSDLite, build_mobilenet_v3_ssdlite_backbone  # noqa: E402

__all__ += [
    "TinyDSOD",
    "build_tiny_dsod_backbone",
    "MobileNetV3SSDLite",
    "build_mobilenet_v3_ssdlite_backbone",
]
