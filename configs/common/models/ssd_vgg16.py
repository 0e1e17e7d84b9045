"""SSD300, VGG16 reduced (LazyConfig): the model of configs/Base-SSD.yaml, 20 classes.

``model.backbone``, ``model.head`` and ``model.anchor_generator`` are our ``@configurable``
classes called with plain arguments, so they can go into other LazyConfig models.
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform

from dssd_d2.modeling import SSD, SSDAnchorGenerator, SSDHead
from dssd_d2.modeling.matcher import BipartiteMatcher
from dssd_d2.modeling.backbone import VGGSSD
from dssd_d2.modeling.backbone.vgg import ExtraLayers

model = L(SSD)(
    backbone=L(VGGSSD)(
        conv_dims=[64, 128, 256, 512, 512],
        fc_dim=1024,
        fc6_dilation=6,
        l2norm_scale=20.0,
        norm="",
        extras=L(ExtraLayers)(
            in_channels="${..fc_dim}",
            conv_dims=[[256, 512], [128, 256], [128, 256], [128, 256]],
            strides=[2, 2, 1, 1],
            paddings=[1, 1, 0, 0],
            kernel_sizes=[3, 3, 3, 3],
            norm="",
        ),
    ),
    head=L(SSDHead)(
        # Channels of each prediction map (conv4_3, fc7, conv6_2 ... conv9_2).
        input_shape=[ShapeSpec(channels=c) for c in (512, 1024, 512, 256, 256, 256)],
        num_classes="${..num_classes}",
        num_anchors=[4, 6, 6, 6, 4, 4],
        prediction_module="none",
    ),
    head_in_features=["conv4_3", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2"],
    anchor_generator=L(SSDAnchorGenerator)(
        min_sizes=[30, 60, 111, 162, 213, 264],
        max_sizes=[60, 111, 162, 213, 264, 315],
        aspect_ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]],
        steps=[8, 16, 32, 64, 100, 300],
        offset=0.5,
    ),
    # Caffe's matching: greedy bipartite, then every prior with IoU >= 0.5.
    anchor_matcher=L(BipartiteMatcher)(threshold=0.5),
    box2box_transform=L(Box2BoxTransform)(weights=(10.0, 10.0, 5.0, 5.0)),
    num_classes=20,
    # torchvision's ImageNet normalisation, in RGB, to match tools/convert_vgg16_weights.py.
    pixel_mean=[123.675, 116.28, 103.53],
    pixel_std=[58.395, 57.12, 57.375],
    input_format="RGB",
)
