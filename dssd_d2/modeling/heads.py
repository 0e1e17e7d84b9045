"""SSD head: per-level class and box convolutions, optionally behind a DSSD prediction module."""

import itertools
from typing import List, Sequence, Tuple

from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling.backbone.resnet import BottleneckBlock
from detectron2.utils.registry import Registry

__all__ = ["SSD_HEAD_REGISTRY", "PREDICTION_MODULE_REGISTRY", "SSDHead", "build_ssd_head"]

SSD_HEAD_REGISTRY = Registry("SSD_HEAD")
SSD_HEAD_REGISTRY.__doc__ = """
Heads of the SSD meta-architecture, called as ``obj(cfg, input_shape, num_anchors)`` with the
ShapeSpec and prior count of each level. ``forward(features)`` returns per-level class logits
(N, A_i * (K + 1), H_i, W_i) and box deltas (N, A_i * 4, H_i, W_i).
"""

PREDICTION_MODULE_REGISTRY = Registry("SSD_PREDICTION_MODULE")
PREDICTION_MODULE_REGISTRY.__doc__ = """
Modules inserted between a feature map and its predictors (DSSD paper, Fig. 2), registered by
function name and called as ``fn(in_channels, dims, norm) -> (module, out_channels)`` where
``dims`` is MODEL.SSD_HEAD.PREDICTION_MODULE_DIMS ([bottleneck, out]).
"""


def _residual_block(in_channels: int, bottleneck: int, out_channels: int, norm: str, projection):
    """Detectron2's bottleneck block (1x1, 3x3, 1x1, BN), with a 1x1 projection skip if asked."""
    block = BottleneckBlock(in_channels, out_channels, bottleneck_channels=bottleneck, norm=norm)
    if projection and block.shortcut is None:  # Detectron2 only projects when channels change
        block.shortcut = Conv2d(
            in_channels, out_channels, 1, bias=False, norm=get_norm(norm, out_channels)
        )
        nn.init.kaiming_normal_(block.shortcut.weight, mode="fan_out", nonlinearity="relu")
    return block


@PREDICTION_MODULE_REGISTRY.register()
def none(in_channels: int, dims: Sequence[int], norm: str) -> Tuple[nn.Module, int]:
    """(a) SSD: predict straight from the feature map."""
    return nn.Identity(), in_channels


@PREDICTION_MODULE_REGISTRY.register()
def residual(in_channels: int, dims: Sequence[int], norm: str) -> Tuple[nn.Module, int]:
    """(b) One residual bottleneck block with an identity skip (keeps the channel count)."""
    return _residual_block(in_channels, dims[0], in_channels, norm, projection=False), in_channels


@PREDICTION_MODULE_REGISTRY.register()
def residual_projection(in_channels: int, dims: Sequence[int], norm: str):
    """(c) DSSD's choice: a bottleneck block to ``dims[1]`` channels with a 1x1 projection skip."""
    return _residual_block(in_channels, dims[0], dims[1], norm, projection=True), dims[1]


@PREDICTION_MODULE_REGISTRY.register()
def two_residual_projection(in_channels: int, dims: Sequence[int], norm: str):
    """(d) Block (c) followed by a second bottleneck block (identity skip)."""
    first, out_channels = residual_projection(in_channels, dims, norm)
    second = _residual_block(out_channels, dims[0], out_channels, norm, projection=False)
    return nn.Sequential(first, second), out_channels


@SSD_HEAD_REGISTRY.register()
class SSDHead(nn.Module):
    """Per level: a prediction module, then one conv for K + 1 class logits per prior and one
    for 4 box offsets per prior. Unlike RetinaNetHead, levels do not share weights and each has
    its own number of priors (4, 6, 6, 6, 4, 4 in SSD300)."""

    @configurable
    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        num_anchors: List[int],
        prediction_module: str = "none",
        prediction_module_dims: Sequence[int] = (256, 1024),
        norm: str = "BN",
        kernel_size: int = 3,
    ):
        super().__init__()
        if len(num_anchors) != len(input_shape):
            raise ValueError(
                f"The anchor generator makes priors for {len(num_anchors)} levels but the head "
                f"gets {len(input_shape)} feature maps (MODEL.SSD.IN_FEATURES)"
            )
        if prediction_module not in PREDICTION_MODULE_REGISTRY:
            raise KeyError(
                f"MODEL.SSD_HEAD.PREDICTION_MODULE={prediction_module!r} is not registered; "
                f"choose from {sorted(name for name, _ in PREDICTION_MODULE_REGISTRY)}"
            )
        build_module = PREDICTION_MODULE_REGISTRY.get(prediction_module)
        # What it predicts, checked by the SSD meta-architecture against its priors and classes.
        self.num_anchors = list(num_anchors)
        self.num_classes = num_classes
        self.prediction_modules = nn.ModuleList()
        self.cls_score = nn.ModuleList()
        self.bbox_pred = nn.ModuleList()
        padding = kernel_size // 2
        for shape, anchors in zip(input_shape, num_anchors):
            module, channels = build_module(shape.channels, prediction_module_dims, norm)
            self.prediction_modules.append(module)
            self.cls_score.append(
                nn.Conv2d(channels, anchors * (num_classes + 1), kernel_size, padding=padding)
            )
            self.bbox_pred.append(nn.Conv2d(channels, anchors * 4, kernel_size, padding=padding))
        # Small predictors: every prior starts near-uniform over the classes, so the first
        # hard-mined losses stay near log(K + 1) instead of exploding (SSD's Xavier init of
        # these convs diverges within a few steps when training from scratch).
        for predictor in itertools.chain(self.cls_score, self.bbox_pred):
            nn.init.normal_(predictor.weight, std=0.01)
            nn.init.zeros_(predictor.bias)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec], num_anchors: List[int]):
        head = cfg.MODEL.SSD_HEAD
        return {
            "input_shape": input_shape,
            "num_classes": cfg.MODEL.SSD.NUM_CLASSES,
            "num_anchors": num_anchors,
            "prediction_module": head.PREDICTION_MODULE,
            "prediction_module_dims": head.PREDICTION_MODULE_DIMS,
            "norm": head.NORM,
            "kernel_size": head.KERNEL_SIZE,
        }

    def forward(self, features):
        logits, deltas = [], []
        for x, module, cls_score, bbox_pred in zip(
            features, self.prediction_modules, self.cls_score, self.bbox_pred
        ):
            x = module(x)
            logits.append(cls_score(x))
            deltas.append(bbox_pred(x))
        return logits, deltas


def build_ssd_head(cfg, input_shape: List[ShapeSpec], num_anchors: List[int]) -> nn.Module:
    return SSD_HEAD_REGISTRY.get(cfg.MODEL.SSD_HEAD.NAME)(cfg, input_shape, num_anchors)
