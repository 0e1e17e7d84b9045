"""DSSD321, ResNet-101 (LazyConfig): the model of configs/PascalVOC-Detection/dssd321_R_101.yaml.

SSD321's network (``ssd_R_101.py``) becomes the bottom-up of ``DSSDBackbone``, the deconvolution
decoder; the head predicts from the decoder's outputs; stage 1 freezes the bottom-up.
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from dssd_d2.modeling.backbone import DSSDBackbone

from .ssd_R_101 import model

_bottom_up = model.backbone
_bottom_up.out_features = ["res3", "res5", "res6", "res7", "res8", "res9"]
model.backbone = L(DSSDBackbone)(
    bottom_up=_bottom_up,
    in_features="${.bottom_up.out_features}",
    out_channels=512,
    image_size=321,
    combine="prod",
    norm="BN",
)
model.head_in_features = [f"dssd_{f}" for f in _bottom_up.out_features]
# Decoder outputs have 512 channels except the coarsest (res9), which keeps its 1024.
model.head.input_shape = [ShapeSpec(channels=c) for c in (512, 512, 512, 512, 512, 1024)]
model.freeze = ["backbone.bottom_up"]
