"""SSDlite's backbone: torchvision's MobileNetV3-Large and SSDlite's depthwise-separable extras.

torchvision's own modules are reused, so a torchvision ``ssdlite320_mobilenet_v3_large`` state
dict loads by a plain key rename (``tools/convert_torchvision_ssdlite.py``) and ImageNet weights
load as torchvision loads them: ``torchvision.models.mobilenet_v3_large`` for the network and
``torchvision.models.detection.ssdlite.SSDLiteFeatureExtractorMobileNet`` for the split at C4
(MobileNetV3 paper, Sec. 6.3: the first map is C4's expansion layer) and the four extra levels
(1x1 conv, 3x3 depthwise stride 2, 1x1 conv, each with BN and ReLU6).
"""

from functools import partial
from typing import Dict

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large
from torchvision.models.detection.ssdlite import SSDLiteFeatureExtractorMobileNet

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from .layers import declare_outputs

__all__ = ["MobileNetV3SSDLite", "build_mobilenet_v3_ssdlite_backbone", "SSDLITE_FEATURES"]

# Outputs, finest first: C4's expansion layer (stride 16), C5 (32), then the extra levels.
SSDLITE_FEATURES = ["c4", "c5", "extra1", "extra2", "extra3", "extra4"]


def _torchvision_ssdlite_norm():
    """The BatchNorm of torchvision's SSDlite (eps 0.001, momentum 0.03), in every layer."""
    return partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)


def normal_init(module: nn.Module, std: float = 0.03):
    """torchvision's SSDlite init for weights trained from scratch: every conv normal with std
    0.03 and zero bias (MobileNetV3's own Kaiming init is for ImageNet training)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _last_strided_block(features: nn.Sequential) -> int:
    """Index of the last block with a stride-2 conv: C4 ends at its expansion layer."""
    strided = [
        i
        for i, block in enumerate(features)
        if any(isinstance(m, nn.Conv2d) and max(m.stride) > 1 for m in block.modules())
    ]
    return strided[-1]


class MobileNetV3SSDLite(Backbone):
    """MobileNetV3-Large split at C4 and C5, plus SSDlite's extra levels; outputs ``c4`` (20x20 at
    320 input), ``c5`` (10x10) and ``extra1`` ... ``extra4`` (5, 3, 2, 1).

    ``self.extractor`` is torchvision's ``SSDLiteFeatureExtractorMobileNet``, so its state dict
    keys are torchvision's ``backbone.*`` keys under ``extractor.``.
    """

    @configurable
    def __init__(
        self,
        *,
        width_mult: float = 1.0,
        reduced_tail: bool = True,
        imagenet_weights: str = "",
        in_channels: int = 3,
    ):
        """
        Args:
            width_mult: MobileNetV3's width multiplier; also scales the extra levels (512, 256,
                256, 128 at 1.0, at least 16).
            reduced_tail: halve the channels after C4 (MobileNetV3 paper, Table 6), as
                torchvision does when no ImageNet weights are used.
            imagenet_weights: a torchvision ``mobilenet_v3_large`` ImageNet state dict file
                (e.g. ``mobilenet_v3_large-8738ca79.pth``), loaded before the split; empty:
                from scratch, with torchvision's SSDlite init. Nothing is downloaded.
        """
        super().__init__()
        if in_channels != 3:
            raise ValueError(
                f"MobileNetV3 takes 3-channel images; MODEL.PIXEL_MEAN has {in_channels} values"
            )
        if imagenet_weights and reduced_tail:
            raise ValueError(
                "MODEL.MOBILENET_V3.IMAGENET_WEIGHTS are for the full network: set "
                "MODEL.MOBILENET_V3.REDUCED_TAIL False to load them"
            )
        norm = _torchvision_ssdlite_norm()
        network = mobilenet_v3_large(
            width_mult=width_mult, reduced_tail=reduced_tail, norm_layer=norm
        )
        if imagenet_weights:
            state = torch.load(imagenet_weights, map_location="cpu", weights_only=True)
            try:
                network.load_state_dict(state)
            except RuntimeError as e:
                raise ValueError(
                    f"MODEL.MOBILENET_V3.IMAGENET_WEIGHTS={imagenet_weights!r} is not a "
                    f"mobilenet_v3_large state dict of width {width_mult} "
                    f"(MODEL.MOBILENET_V3.WIDTH_MULT): {e}"
                ) from e
        else:
            normal_init(network)
        features = network.features
        self.extractor = SSDLiteFeatureExtractorMobileNet(
            features, _last_strided_block(features), norm, width_mult=width_mult
        )

        channels = [
            self.extractor.features[0][-1].out_channels,
            features[-1].out_channels,
        ] + [level[-1].out_channels for level in self.extractor.extra]
        declare_outputs(self, SSDLITE_FEATURES, channels, stride=16)

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        mobilenet = cfg.MODEL.MOBILENET_V3
        return {
            "width_mult": mobilenet.WIDTH_MULT,
            "reduced_tail": mobilenet.REDUCED_TAIL,
            "imagenet_weights": mobilenet.IMAGENET_WEIGHTS,
            "in_channels": input_shape.channels,
        }

    def forward(self, x) -> Dict[str, torch.Tensor]:
        return dict(zip(self._out_features, self.extractor(x).values()))


@BACKBONE_REGISTRY.register()
def build_mobilenet_v3_ssdlite_backbone(cfg, input_shape: ShapeSpec):
    """SSDlite's MobileNetV3-Large backbone with its extra levels
    (``MODEL.BACKBONE.NAME: build_mobilenet_v3_ssdlite_backbone``)."""
    return MobileNetV3SSDLite(cfg, input_shape)
