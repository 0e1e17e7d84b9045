"""SSD head: per-level class and box convolutions, optionally behind a DSSD prediction module."""

import math
from typing import List, Sequence, Tuple, Union

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling.backbone.resnet import BottleneckBlock
from detectron2.utils.registry import Registry

__all__ = [
    "SSD_HEAD_REGISTRY",
    "PREDICTION_MODULE_REGISTRY",
    "PREDICTOR_REGISTRY",
    "SSDHead",
    "build_ssd_head",
]

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
``dims`` is the level's [bottleneck, out] (MODEL.SSD_HEAD.PREDICTION_MODULE_DIMS).
"""

PREDICTOR_REGISTRY = Registry("SSD_PREDICTOR")
PREDICTOR_REGISTRY.__doc__ = """
The class and box predictors of one level, registered by function name and called as
``fn(in_channels, out_channels, kernel_size, norm) -> nn.Module`` (MODEL.SSD_HEAD.PREDICTOR).
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


@PREDICTOR_REGISTRY.register()
def conv(in_channels: int, out_channels: int, kernel_size: int, norm: str) -> nn.Module:
    """SSD: one biased conv. It starts small (normal, std 0.01), so that every prior starts
    near-uniform over the classes and the first hard-mined losses stay near log(K + 1); SSD's
    Xavier init of these convs diverges within a few steps when training from scratch."""
    predictor = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
    nn.init.normal_(predictor.weight, std=0.01)
    nn.init.zeros_(predictor.bias)
    return predictor


@PREDICTOR_REGISTRY.register()
def conv_bn(in_channels: int, out_channels: int, kernel_size: int, norm: str) -> nn.Module:
    """DSOD's released predictors: a bias-free conv, then BatchNorm with a learned scale and
    shift. The norm makes the predictions independent of the scale of their input (the
    L2Norm-scaled sources) and of the conv's weights, which is what lets the from-scratch recipe
    take lr 0.1 (see docs/experiments/2026-11-22-dsod-bccd-recipe.md)."""
    predictor = Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        padding=kernel_size // 2,
        bias=False,
        norm=get_norm(norm, out_channels),
    )
    nn.init.normal_(predictor.weight, std=0.01)
    return predictor


@PREDICTOR_REGISTRY.register()
def separable(in_channels: int, out_channels: int, kernel_size: int, norm: str) -> nn.Module:
    """SSDlite (MobileNetV2 paper): a depthwise conv with norm and ReLU6, then a 1x1 conv."""
    depthwise = Conv2d(
        in_channels,
        in_channels,
        kernel_size,
        padding=kernel_size // 2,
        groups=in_channels,
        bias=False,
        norm=get_norm(norm, in_channels),
        activation=nn.ReLU6(inplace=True),
    )
    pointwise = nn.Conv2d(in_channels, out_channels, 1)
    for layer in (depthwise, pointwise):
        nn.init.normal_(layer.weight, std=0.03)
    nn.init.zeros_(pointwise.bias)
    return nn.Sequential(depthwise, pointwise)


def _per_level(value, num_levels: int, key: str, is_single) -> list:
    """``value`` for every level, or one value per level (an error naming ``key`` otherwise)."""
    if is_single(value):
        return [value] * num_levels
    if len(value) != num_levels:
        raise ValueError(f"{key} needs one entry per feature map ({num_levels}); got {value}")
    return list(value)


@SSD_HEAD_REGISTRY.register()
class SSDHead(nn.Module):
    """Per level: a prediction module, then a predictor of K + 1 class logits per prior and one
    of 4 box offsets per prior. Unlike RetinaNetHead, levels do not share weights and each has
    its own number of priors (4, 6, 6, 6, 4, 4 in SSD300), prediction-module width and kernel
    size (the official DSSD uses 5x5 predictors on its two finest maps)."""

    @configurable
    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        num_anchors: List[int],
        prediction_module: str = "none",
        prediction_module_dims: Union[Sequence[int], Sequence[Sequence[int]]] = (256, 1024),
        norm: str = "BN",
        kernel_size: Union[int, Sequence[int]] = 3,
        predictor: str = "conv",
        prior_prob: float = 0.0,
        inter_channels: int = 0,
    ):
        """
        Args:
            prediction_module_dims: [bottleneck, out] channels of the prediction modules, for
                every level or one pair per level.
            kernel_size: of the predictors, for every level or one per level.
            predictor: name in PREDICTOR_REGISTRY: "conv", "conv_bn" or "separable".
            prior_prob: if > 0, every prior starts with this total foreground probability.
            inter_channels: if > 0, each predictor is preceded by its own 3x3 conv of this
                width with norm and ReLU (the official DSSD513).
        """
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
        if predictor not in PREDICTOR_REGISTRY:
            raise KeyError(
                f"MODEL.SSD_HEAD.PREDICTOR={predictor!r} is not registered; "
                f"choose from {sorted(name for name, _ in PREDICTOR_REGISTRY)}"
            )
        build_module = PREDICTION_MODULE_REGISTRY.get(prediction_module)
        build_predictor = PREDICTOR_REGISTRY.get(predictor)
        num_levels = len(input_shape)
        kernel_sizes = _per_level(
            kernel_size, num_levels, "MODEL.SSD_HEAD.KERNEL_SIZES", lambda v: isinstance(v, int)
        )
        module_dims = _per_level(
            prediction_module_dims,
            num_levels,
            "MODEL.SSD_HEAD.PREDICTION_MODULE_DIMS",
            lambda v: all(isinstance(d, int) for d in v),
        )
        # What it predicts, checked by the SSD meta-architecture against its priors and classes.
        self.num_anchors = list(num_anchors)
        self.num_classes = num_classes
        self.prediction_modules = nn.ModuleList()
        self.cls_score = nn.ModuleList()
        self.bbox_pred = nn.ModuleList()
        for shape, anchors, dims, kernel in zip(
            input_shape, num_anchors, module_dims, kernel_sizes
        ):
            module, channels = build_module(shape.channels, dims, norm)
            self.prediction_modules.append(module)
            for predictors, out in (
                (self.cls_score, anchors * (num_classes + 1)),
                (self.bbox_pred, anchors * 4),
            ):
                if inter_channels:
                    inter = Conv2d(
                        channels,
                        inter_channels,
                        3,
                        padding=1,
                        bias=False,
                        norm=get_norm(norm, inter_channels),
                        activation=nn.ReLU(inplace=True),
                    )
                    nn.init.normal_(inter.weight, std=0.01)
                    predictor = build_predictor(inter_channels, out, kernel, norm)
                    predictors.append(nn.Sequential(inter, predictor))
                else:
                    predictors.append(build_predictor(channels, out, kernel, norm))
        if prior_prob > 0:
            self._start_background_at(1 - prior_prob)

    def _start_background_at(self, prob: float):
        """Set each predictor's output bias (a BatchNorm's shift for "conv_bn") so that, with the
        class logits near zero, softmax gives background ``prob`` and the classes the rest."""
        background_bias = math.log(self.num_classes * prob / (1 - prob))
        for cls_score in self.cls_score:
            last = cls_score[-1] if isinstance(cls_score, nn.Sequential) else cls_score
            bias = last.norm.bias if getattr(last, "norm", None) is not None else last.bias
            with torch.no_grad():
                bias.view(-1, self.num_classes + 1)[:, -1] = background_bias

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec], num_anchors: List[int]):
        head = cfg.MODEL.SSD_HEAD
        return {
            "input_shape": input_shape,
            "num_classes": cfg.MODEL.SSD.NUM_CLASSES,
            "num_anchors": num_anchors,
            "prediction_module": head.PREDICTION_MODULE,
            "prediction_module_dims": head.PREDICTION_MODULE_DIMS_PER_LEVEL
            or head.PREDICTION_MODULE_DIMS,
            "norm": head.NORM,
            "kernel_size": head.KERNEL_SIZES or head.KERNEL_SIZE,
            "predictor": head.PREDICTOR,
            "prior_prob": head.PRIOR_PROB,
            "inter_channels": head.PREDICTOR_INTER_CHANNELS,
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
