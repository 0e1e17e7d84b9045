"""ResNet for SSD (DSSD paper, Sec. 3.1 and 4): Detectron2's ResNet, SSD stem, extra levels.

Three differences from Detectron2's ``build_resnet_backbone``, all from the paper:

* the stem's 3x3/s2 max-pool has no padding and rounds up, so a 321 input gives a 40x40 ``res3``
  (Detectron2's padded pool gives 41x41) and 513 gives 64x64;
* ``res5`` keeps stride 16 with dilation 2 (R-FCN style); this is Detectron2's own
  ``MODEL.RESNETS.RES5_DILATION = 2``;
* extra residual bottleneck levels ``res6``, ``res7``, ... (the paper's conv6_x, conv7_x, ...) take
  the map down to 1x1, one level per entry of ``MODEL.SSD_EXTRAS``.

The ResNet blocks are built by Detectron2's ``build_resnet_backbone`` and keep its module names
(``stem.conv1``, ``res2.0.conv1`` ...), so Detectron2's ``R-101.pkl`` loads with its checkpointer.
"""

from typing import List, Sequence

from fvcore.nn import weight_init
from torch.nn import functional as F

from detectron2.layers import CNNBlockBase, Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import (
    BasicStem,
    BottleneckBlock,
    ResNet,
    build_resnet_backbone,
)

from .layers import extra_level_settings

__all__ = ["SSDStem", "ExtraBottleneckBlock", "ResNetSSD", "build_resnet_ssd_backbone"]


class SSDStem(BasicStem):
    """ResNet's 7x7/s2 conv, then a 3x3/s2 max-pool without padding that rounds up (Caffe pooling).

    Same weights as :class:`BasicStem`; only the pooling differs, which is what makes SSD321's
    prediction maps 40, 20, 10, ... instead of 41, 21, 11, ...
    """

    def forward(self, x):
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=0, ceil_mode=True)


def _bn_conv(in_channels, out_channels, kernel_size, stride, norm, padding=0):
    """A bias-free, normalized, MSRA-initialized conv, as Detectron2's ResNet blocks build them."""
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        bias=False,
        norm=get_norm(norm, out_channels),
    )
    weight_init.c2_msra_fill(conv)
    return conv


class ExtraBottleneckBlock(BottleneckBlock):
    """Detectron2's bottleneck block as an SSD extra level: always a projection shortcut, and a
    middle conv whose kernel and padding may shrink the map (e.g. 3x3 without padding: 3x3 -> 1x1).

    When the middle conv is "valid" the shortcut reads the input at the centres of its windows
    (a centre crop before the strided 1x1 projection), so both paths have the same size and stay
    aligned. With ``first_kernel`` > 1 the first conv and the projection are ``first_kernel``
    square, unpadded and strided, and the middle conv has stride 1 (the official SSD513/DSSD513:
    2x2 stride 2).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        kernel_size: int = 3,
        padding: int = 1,
        norm: str = "BN",
        first_kernel: int = 1,
    ):
        super().__init__(
            in_channels,
            out_channels,
            bottleneck_channels=bottleneck_channels,
            stride=stride,
            norm=norm,
        )
        crop = kernel_size - 1 - 2 * padding
        if crop < 0 or crop % 2:
            raise ValueError(
                f"An extra level with kernel {kernel_size} and padding {padding} cannot keep a "
                "residual shortcut aligned; MODEL.SSD_EXTRAS.PADDINGS must be at most "
                "(KERNEL_SIZES - 1) / 2 with KERNEL_SIZES - 1 - 2 * PADDINGS even."
            )
        self.crop = crop // 2
        middle_stride = stride
        if first_kernel > 1:
            if self.crop:
                raise ValueError(
                    "MODEL.SSD_EXTRAS.FIRST_KERNEL_SIZES > 1 needs a padded middle conv "
                    "(KERNEL_SIZES - 1 == 2 * PADDINGS)"
                )
            middle_stride = 1
            self.conv1 = _bn_conv(in_channels, bottleneck_channels, first_kernel, stride, norm)
            self.shortcut = _bn_conv(in_channels, out_channels, first_kernel, stride, norm)
        if (kernel_size, padding) != (3, 1) or middle_stride != stride:
            self.conv2 = _bn_conv(
                bottleneck_channels, bottleneck_channels, kernel_size, middle_stride, norm, padding
            )
        if self.shortcut is None:  # Detectron2 projects only when the channel count changes
            self.shortcut = _bn_conv(in_channels, out_channels, 1, stride, norm)

    def forward(self, x):
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        if self.crop:
            x = x[..., self.crop : -self.crop, self.crop : -self.crop]
        return F.relu_(out + self.shortcut(x))


class ResNetSSD(ResNet):
    """A :class:`ResNet` followed by extra single-block levels named ``res6``, ``res7``, ...

    Outputs any of ``stem``, ``res2`` ... ``res5`` and the extra levels (``out_features``); the
    head picks its prediction maps among them (``res3``, ``res5``, ``res6`` ... in the paper).
    """

    def __init__(
        self,
        stem: CNNBlockBase,
        stages: List[List[CNNBlockBase]],
        extra_blocks: Sequence[CNNBlockBase] = (),
        out_features: Sequence[str] = ("res3", "res5"),
        freeze_at: int = 0,
    ):
        """
        Args:
            stem, stages, freeze_at: as in :class:`ResNet`.
            extra_blocks: one block per extra level, applied after the last stage.
            out_features: names of the outputs, among the ResNet's and ``res6``, ``res7`` ...
        """
        last_stage = f"res{len(stages) + 1}"
        extra_names = [f"res{len(stages) + 2 + i}" for i in range(len(extra_blocks))]
        resnet_features = [f for f in out_features if f not in extra_names]
        if extra_blocks and last_stage not in resnet_features:
            resnet_features.append(last_stage)  # the extra levels start from it
        super().__init__(stem, stages, out_features=resnet_features, freeze_at=freeze_at)

        self.extra_names = tuple(extra_names)
        stride = self._out_feature_strides[last_stage]
        for name, block in zip(extra_names, extra_blocks):
            self.add_module(name, block)
            self._out_feature_strides[name] = stride = stride * block.stride
            self._out_feature_channels[name] = block.out_channels
        self._resnet_features = resnet_features
        self._out_features = list(out_features)
        unknown = set(self._out_features) - set(self._out_feature_channels)
        if unknown:
            raise ValueError(
                f"ResNet-SSD has no output {sorted(unknown)}; it has "
                f"{list(self._out_feature_channels)} (MODEL.RESNETS.OUT_FEATURES, plus one "
                "res<k> per MODEL.SSD_EXTRAS level)"
            )

    def forward(self, x):
        resnet_outputs = super().forward(x)
        outputs = {f: resnet_outputs[f] for f in self._resnet_features if f in self._out_features}
        if self.extra_names:
            x = resnet_outputs[self.stage_names[-1]]
            for name in self.extra_names:
                x = getattr(self, name)(x)
                if name in self._out_features:
                    outputs[name] = x
        return {f: outputs[f] for f in self._out_features}


@BACKBONE_REGISTRY.register()
def build_resnet_ssd_backbone(cfg, input_shape: ShapeSpec):
    """ResNet-SSD from ``MODEL.RESNETS`` (Detectron2's keys: DEPTH, NORM, RES5_DILATION ...) and
    ``MODEL.SSD_EXTRAS`` (one bottleneck block per extra level: [bottleneck, out] channels,
    stride, padding and kernel of its middle conv).

    The outputs are ``MODEL.RESNETS.OUT_FEATURES`` (e.g. ``["res3", "res5"]``) followed by every
    extra level. The extra levels use ``MODEL.SSD_EXTRAS.NORM``, or the ResNet's norm when it
    is empty. Their stride sits in the 3x3 conv (new layers; no MSRA weights to match).
    """
    # Detectron2 builds the stages (depth, widths, groups, RES5_DILATION, stride_in_1x1 ...);
    # its stem is replaced by the SSD one, which has the same weights.
    resnet_cfg = cfg.clone()
    resnet_cfg.defrost()
    resnet_cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    resnet_cfg.MODEL.BACKBONE.FREEZE_AT = 0  # applied once, below, to the final network
    resnet = build_resnet_backbone(resnet_cfg, input_shape)
    stages = [list(getattr(resnet, name).children()) for name in resnet.stage_names]
    stem = SSDStem(
        in_channels=input_shape.channels,
        out_channels=cfg.MODEL.RESNETS.STEM_OUT_CHANNELS,
        norm=cfg.MODEL.RESNETS.NORM,
    )

    extras = cfg.MODEL.SSD_EXTRAS
    norm = extras.NORM or cfg.MODEL.RESNETS.NORM
    in_channels = stages[-1][-1].out_channels
    extra_blocks = []
    settings = extra_level_settings(
        extras.CONV_DIMS, extras.STRIDES, extras.PADDINGS, extras.KERNEL_SIZES
    )
    first_kernels = list(extras.FIRST_KERNEL_SIZES) or [1] * len(settings)
    if len(first_kernels) != len(settings):
        raise ValueError(
            f"MODEL.SSD_EXTRAS.FIRST_KERNEL_SIZES needs one entry per extra level "
            f"({len(settings)}); got {first_kernels}"
        )
    for (bottleneck, out, stride, padding, kernel), first in zip(settings, first_kernels):
        extra_blocks.append(
            ExtraBottleneckBlock(
                in_channels,
                out,
                bottleneck_channels=bottleneck,
                stride=stride,
                kernel_size=kernel,
                padding=padding,
                norm=norm,
                first_kernel=first,
            )
        )
        in_channels = out
    out_features = list(cfg.MODEL.RESNETS.OUT_FEATURES)
    out_features += [f"res{len(stages) + 2 + i}" for i in range(len(extra_blocks))]
    return ResNetSSD(
        stem,
        stages,
        extra_blocks,
        out_features=out_features,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )
