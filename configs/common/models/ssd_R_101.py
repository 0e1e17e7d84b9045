"""SSD321, ResNet-101 (LazyConfig): the model of configs/PascalVOC-Detection/ssd321_R_101.yaml.

Detectron2's ResNet stages (``ResNet.make_stage``, res5 at stride 16 with dilation 2), the SSD
stem pool and four residual extra levels res6 ... res9 (10, 5, 3, 1 at 321).
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import BottleneckBlock, ResNet
from detectron2.modeling.box_regression import Box2BoxTransform

from dssd_d2.modeling import SSD, SSDAnchorGenerator, SSDHead
from dssd_d2.modeling.matcher import BipartiteMatcher
from dssd_d2.modeling.backbone.resnet import ExtraBottleneckBlock, ResNetSSD, SSDStem

# (blocks, stride of the first block, dilation) of res2 ... res5 in ResNet-101.
_STAGES = [(3, 1, 1), (4, 2, 1), (23, 2, 1), (3, 1, 2)]

model = L(SSD)(
    backbone=L(ResNetSSD)(
        stem=L(SSDStem)(in_channels=3, out_channels=64, norm="BN"),
        stages=[
            L(ResNet.make_stage)(
                block_class=BottleneckBlock,
                num_blocks=blocks,
                stride_per_block=[stride] + [1] * (blocks - 1),
                in_channels=64 if i == 0 else 256 * 2 ** (i - 1),
                bottleneck_channels=64 * 2**i,
                out_channels=256 * 2**i,
                stride_in_1x1=True,
                dilation=dilation,
                norm="BN",
            )
            for i, (blocks, stride, dilation) in enumerate(_STAGES)
        ],
        # res6 .. res9: 1x1 256, 3x3 256 (stride 2, 2, 2, then 1 without padding), 1x1 1024.
        extra_blocks=[
            L(ExtraBottleneckBlock)(
                in_channels=2048 if i == 0 else 1024,
                out_channels=1024,
                bottleneck_channels=256,
                stride=stride,
                kernel_size=3,
                padding=padding,
                norm="BN",
            )
            for i, (stride, padding) in enumerate([(2, 1), (2, 1), (2, 1), (1, 0)])
        ],
        out_features="${..head_in_features}",
        freeze_at=0,
    ),
    head=L(SSDHead)(
        input_shape=[ShapeSpec(channels=c) for c in (512, 2048, 1024, 1024, 1024, 1024)],
        num_classes="${..num_classes}",
        num_anchors=[8] * 6,
        prediction_module="residual_projection",
        prediction_module_dims=[256, 1024],
    ),
    head_in_features=["res3", "res5", "res6", "res7", "res8", "res9"],
    anchor_generator=L(SSDAnchorGenerator)(
        min_sizes=[32.1, 64.2, 118.77, 173.34, 227.91, 282.48],
        max_sizes=[64.2, 118.77, 173.34, 227.91, 282.48, 337.05],
        aspect_ratios=[[1.6, 2.0, 3.0]],
        steps=[8, 16, 32, 64, 107, 321],
        offset=0.5,
    ),
    anchor_matcher=L(BipartiteMatcher)(threshold=0.5),  # Caffe's matching
    box2box_transform=L(Box2BoxTransform)(weights=(10.0, 10.0, 5.0, 5.0)),
    num_classes=20,
    # Detectron2's ImageNet ResNet-101 (MSRA): BGR, mean subtracted, std 1.
    pixel_mean=[103.530, 116.280, 123.675],
    pixel_std=[1.0, 1.0, 1.0],
    input_format="BGR",
)
