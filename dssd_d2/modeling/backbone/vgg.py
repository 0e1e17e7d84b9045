"""VGG16 "reduced" for SSD (Liu et al. 2016): fc6/fc7 as convolutions plus extra layers."""

from typing import Dict, List, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from .layers import L2Norm, extra_level_settings, xavier_init

__all__ = [
    "VGGSSD",
    "build_vgg_ssd_backbone",
    "ExtraLayers",
    "VGG16_CONV_NAMES",
    "torchvision_conv_indices",
]

# VGG16's 13 convolutions by stage (a 2x2 max-pool between stages). Our modules keep these
# names, so ImageNet weights load by name (tools/convert_vgg16_weights.py maps them).
VGG16_CONV_NAMES = tuple(
    tuple(f"conv{stage}_{i}" for i in range(1, num_convs + 1))
    for stage, num_convs in enumerate((2, 2, 3, 3, 3), start=1)
)


def torchvision_conv_indices():
    """{our conv name: its index in torchvision's ``vgg16().features``}, where each stage is
    (conv, ReLU) per conv followed by one max-pool: what the weight converters map."""
    indices, index = {}, 0
    for names in VGG16_CONV_NAMES:
        for name in names:
            indices[name] = index
            index += 2
        index += 1
    return indices


class ExtraLayers(nn.Module):
    """SSD's extra levels: per level a 1x1 bottleneck conv, then a strided conv, ReLU after each.

    Each level's output is one prediction source; together they take the map down to 1x1.
    """

    def __init__(
        self,
        in_channels: int,
        conv_dims: Sequence[Sequence[int]],
        strides: Sequence[int],
        paddings: Sequence[int],
        kernel_sizes: Sequence[int],
        norm: str = "",
    ):
        super().__init__()
        self.levels = nn.ModuleList()
        self.out_channels: List[int] = []
        settings = extra_level_settings(conv_dims, strides, paddings, kernel_sizes)
        for mid, out, stride, padding, k in settings:
            self.levels.append(
                nn.Sequential(
                    Conv2d(in_channels, mid, 1, bias=not norm, norm=get_norm(norm, mid)),
                    nn.ReLU(inplace=True),
                    Conv2d(
                        mid,
                        out,
                        k,
                        stride=stride,
                        padding=padding,
                        bias=not norm,
                        norm=get_norm(norm, out),
                    ),
                    nn.ReLU(inplace=True),
                )
            )
            self.out_channels.append(out)
            in_channels = out
        xavier_init(self)

    def forward(self, x) -> List:
        outputs = []
        for level in self.levels:
            x = level(x)
            outputs.append(x)
        return outputs


class VGGSSD(Backbone):
    """VGG16 with pool5 3x3/s1, fc6 as a dilated 3x3 conv and fc7 as a 1x1 conv, then extra levels.

    Outputs every map it computes: ``conv4_3`` (L2-normalised, learned scale), ``fc7`` and
    ``conv6_2``, ``conv7_2``, ... (one per extra level); the model using it picks among them by
    name (MODEL.SSD.IN_FEATURES, MODEL.DSSD.IN_FEATURES). pool3 rounds up (ceil), so a 300 input
    gives conv4_3 at 38x38.
    Module names follow VGG's (``conv1_1`` ... ``fc7``) so converted ImageNet weights load by name.
    ``norm`` (off in the SSD paper) adds BatchNorm after every conv, for training from scratch.
    """

    @configurable
    def __init__(
        self,
        *,
        conv_dims: Sequence[int] = (64, 128, 256, 512, 512),
        fc_dim: int = 1024,
        fc6_dilation: int = 6,
        l2norm_scale: float = 20.0,
        norm: str = "",
        extras: ExtraLayers,
        in_channels: int = 3,
    ):
        super().__init__()
        self._stage_convs: List[Sequence[str]] = []
        for names, dim in zip(VGG16_CONV_NAMES, conv_dims):
            for name in names:
                conv = Conv2d(
                    in_channels, dim, 3, padding=1, bias=not norm, norm=get_norm(norm, dim)
                )
                self.add_module(name, conv)
                in_channels = dim
            self._stage_convs.append(names)
        self.conv4_3_norm = L2Norm(conv_dims[3], l2norm_scale)
        self.fc6 = Conv2d(
            conv_dims[4],
            fc_dim,
            3,
            padding=fc6_dilation,
            dilation=fc6_dilation,
            bias=not norm,
            norm=get_norm(norm, fc_dim),
        )
        self.fc7 = Conv2d(fc_dim, fc_dim, 1, bias=not norm, norm=get_norm(norm, fc_dim))
        xavier_init(self)  # ImageNet weights, when given, overwrite conv1_1 ... fc7
        self.extras = extras

        names = ["conv4_3", "fc7"] + [f"conv{i + 6}_2" for i in range(len(extras.levels))]
        channels = [conv_dims[3], fc_dim] + extras.out_channels
        strides = [8, 16] + [16 * 2 ** (i + 1) for i in range(len(extras.levels))]
        self._out_feature_channels = dict(zip(names, channels))
        self._out_feature_strides = dict(zip(names, strides))
        self._out_features = names

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        return {
            "conv_dims": cfg.MODEL.VGG.CONV_DIMS,
            "fc_dim": cfg.MODEL.VGG.FC_DIM,
            "fc6_dilation": cfg.MODEL.VGG.FC6_DILATION,
            "l2norm_scale": cfg.MODEL.VGG.L2NORM_SCALE,
            "norm": cfg.MODEL.VGG.NORM,
            "extras": ExtraLayers(
                cfg.MODEL.VGG.FC_DIM,
                cfg.MODEL.SSD_EXTRAS.CONV_DIMS,
                cfg.MODEL.SSD_EXTRAS.STRIDES,
                cfg.MODEL.SSD_EXTRAS.PADDINGS,
                cfg.MODEL.SSD_EXTRAS.KERNEL_SIZES,
                cfg.MODEL.SSD_EXTRAS.NORM,
            ),
            "in_channels": input_shape.channels,
        }

    def forward(self, x) -> Dict[str, torch.Tensor]:
        outputs = {}
        for stage, names in enumerate(self._stage_convs, start=1):
            if stage > 1:  # pool3 rounds up: 75 -> 38 for SSD300
                x = F.max_pool2d(x, 2, stride=2, ceil_mode=(stage == 4))
            for name in names:
                x = F.relu(getattr(self, name)(x), inplace=True)
            if stage == 4:
                outputs["conv4_3"] = self.conv4_3_norm(x)
        x = F.max_pool2d(x, 3, stride=1, padding=1)  # pool5
        x = F.relu(self.fc6(x), inplace=True)
        x = F.relu(self.fc7(x), inplace=True)
        outputs["fc7"] = x
        for i, feature in enumerate(self.extras(x)):
            outputs[f"conv{i + 6}_2"] = feature
        return outputs


@BACKBONE_REGISTRY.register()
def build_vgg_ssd_backbone(cfg, input_shape: ShapeSpec):
    """VGG16-reduced SSD backbone (``MODEL.BACKBONE.NAME: build_vgg_ssd_backbone``)."""
    return VGGSSD(cfg, input_shape)
