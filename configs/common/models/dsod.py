"""DSOD300, DS/64-192-48-1 with dense prediction (LazyConfig): the model of
configs/PascalVOC-Detection/dsod300.yaml, trained from scratch."""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform

from dssd_d2.modeling import SSD, SSDAnchorGenerator, SSDHead
from dssd_d2.modeling.matcher import BipartiteMatcher
from dssd_d2.modeling.backbone import DSOD

model = L(SSD)(
    backbone=L(DSOD)(
        stem_width=64,
        bottleneck_width=192,
        growth_rate=48,
        compression=1.0,
        block_layers=[6, 8, 8, 8],
        transition_channels=[0, 0, 0, 256],
        prediction="dense",
        dense_half_channels=[256, 256, 128, 128, 128],
        last_map_size=2,
        norm="BN",  # "SyncBN" for multi-GPU training with few images per GPU
    ),
    head=L(SSDHead)(
        # Sources dsod1 ... dsod6 at 38, 19, 10, 5, 3, 2.
        input_shape=[ShapeSpec(channels=c) for c in (800, 512, 512, 256, 256, 256)],
        num_classes="${..num_classes}",
        num_anchors=[4, 6, 6, 6, 4, 4],
        prediction_module="none",
        predictor="conv_bn",  # bias-free conv + BatchNorm, as the released DSOD
    ),
    head_in_features=["dsod1", "dsod2", "dsod3", "dsod4", "dsod5", "dsod6"],
    anchor_generator=L(SSDAnchorGenerator)(
        min_sizes=[30, 60, 111, 162, 213, 264],
        max_sizes=[60, 111, 162, 213, 264, 315],
        aspect_ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]],
        steps=[8, 16, 32, 64, 100, 150],  # the last map is 2x2
        offset=0.5,
    ),
    anchor_matcher=L(BipartiteMatcher)(threshold=0.5),  # Caffe's matching
    box2box_transform=L(Box2BoxTransform)(weights=(10.0, 10.0, 5.0, 5.0)),
    num_classes=20,
    pixel_mean=[123.675, 116.28, 103.53],
    pixel_std=[58.395, 57.12, 57.375],
    input_format="RGB",
)
