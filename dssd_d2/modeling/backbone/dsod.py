"""DSOD (Shen et al. 2017): a DenseNet backbone and prediction layers trained from scratch.

The backbone is the paper's DS/A-B-k-theta network (Table 1) in three parts, each a module of
its own: the stem (:class:`StemBlock`, or DenseNet's original stem for the ablation),
the dense stages (:class:`DenseStages`: four dense blocks of pre-activation BN-ReLU-conv
bottleneck layers, two transitions with pooling and two without) and the prediction structure
(:class:`DensePrediction` or :class:`PlainPrediction`, the paper's Fig. 1). The six sources are
L2-normalised with a learned scale (20 at start) and named ``dsod1`` (finest, 38x38 at 300
input) to ``dsod6`` (2x2, or 1x1 with ``last_map_size=1``).
"""

import math
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from .layers import L2Norm, declare_outputs, xavier_init

__all__ = [
    "DSOD",
    "StemBlock",
    "DenseNetStem",
    "DenseStages",
    "DensePrediction",
    "PlainPrediction",
    "build_dsod_backbone",
]

_NUM_SOURCES = 6


def _pool2x2():
    """2x2 max-pool, stride 2, rounding up like Caffe: 75 -> 38, 5 -> 3, 3 -> 2."""
    return nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)


def _conv_norm_relu(in_channels, out_channels, kernel_size, stride, norm):
    return Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=kernel_size // 2,
        bias=False,
        norm=get_norm(norm, out_channels),
        activation=nn.ReLU(inplace=True),
    )


class StemBlock(nn.Sequential):
    """DSOD's stem (Principle 3): 3x3 stride-2 conv of A channels, 3x3 A, 3x3 2A, each with
    norm and ReLU, then a 2x2 max-pool: 300 -> 75, losing less of the raw image than DenseNet's
    7x7 conv and 3x3 pool (77.3 against 74.5 mAP in the paper's Table 3)."""

    def __init__(self, in_channels: int, width: int, norm: str):
        super().__init__(
            _conv_norm_relu(in_channels, width, 3, 2, norm),
            _conv_norm_relu(width, width, 3, 1, norm),
            _conv_norm_relu(width, 2 * width, 3, 1, norm),
            _pool2x2(),
        )
        self.out_channels = 2 * width


class DenseNetStem(nn.Sequential):
    """DenseNet's original stem, for the stem ablation: 7x7 stride-2 conv, norm, ReLU, 3x3
    stride-2 max-pool (300 -> 75). It gives 2A channels, as the stem block does, so that the
    dense stages are the same in both rows of the ablation."""

    def __init__(self, in_channels: int, width: int, norm: str):
        super().__init__(
            _conv_norm_relu(in_channels, 2 * width, 7, 2, norm),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.out_channels = 2 * width


STEMS = {"stem_block": StemBlock, "densenet": DenseNetStem}


class PreActConv(nn.Sequential):
    """Norm, ReLU, then a bias-free conv: DenseNet's pre-activation unit used throughout DSOD."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, norm="BN"):
        super().__init__(
            get_norm(norm, in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False),
        )
        self.out_channels = out_channels


class DenseLayer(nn.Module):
    """1x1 bottleneck to ``bottleneck_channels``, 3x3 to ``growth_rate``; the result is appended
    to the input channels, so every later layer sees all earlier ones (deep supervision)."""

    def __init__(self, in_channels: int, bottleneck_channels: int, growth_rate: int, norm: str):
        super().__init__()
        self.bottleneck = PreActConv(in_channels, bottleneck_channels, 1, norm=norm)
        self.conv = PreActConv(bottleneck_channels, growth_rate, 3, padding=1, norm=norm)

    def forward(self, x):
        return torch.cat([x, self.conv(self.bottleneck(x))], dim=1)


class DenseBlock(nn.Sequential):
    def __init__(self, num_layers, in_channels, bottleneck_channels, growth_rate, norm):
        layers = [
            DenseLayer(in_channels + i * growth_rate, bottleneck_channels, growth_rate, norm)
            for i in range(num_layers)
        ]
        super().__init__(*layers)
        self.out_channels = in_channels + num_layers * growth_rate


class DenseStages(nn.Module):
    """Dense blocks, each followed by a 1x1 transition; the first two transitions pool (75 ->
    38 -> 19), the later ones do not (the paper's "transition w/o pooling", Principle 2: more
    blocks at the same resolution). Returns the first source (``transition2``, 38x38) and the
    last transition's output (19x19).

    With ``transition_without_pooling=False`` (the ablation's "3 dense blocks") the third and
    fourth blocks are one block of both blocks' layers, followed by the last transition.
    """

    def __init__(
        self,
        in_channels: int,
        bottleneck_width: int,
        growth_rate: int,
        compression: float,
        block_layers: Sequence[int],
        transition_channels: Sequence[int],
        transition_without_pooling: bool,
        norm: str,
    ):
        super().__init__()
        if len(block_layers) != 4 or len(transition_channels) != 4:
            raise ValueError(
                "MODEL.DSOD.BLOCK_LAYERS and TRANSITION_CHANNELS need one entry per dense block "
                f"(4); got {list(block_layers)} and {list(transition_channels)}"
            )
        block_layers, transition_channels = list(block_layers), list(transition_channels)
        if not transition_without_pooling:
            block_layers[2:] = [block_layers[2] + block_layers[3]]
            transition_channels[2:] = [transition_channels[3]]
        self.num_blocks = len(block_layers)
        channels = in_channels
        for i, (num_layers, out) in enumerate(zip(block_layers, transition_channels), start=1):
            block = DenseBlock(num_layers, channels, bottleneck_width, growth_rate, norm)
            out = out or int(math.floor(compression * block.out_channels))
            self.add_module(f"dense{i}", block)
            self.add_module(f"transition{i}", PreActConv(block.out_channels, out, 1, norm=norm))
            if i <= 2:
                self.add_module(f"pool{i}", _pool2x2())
            channels = out
        self.first_channels = self.transition2.out_channels
        self.out_channels = channels

    def forward(self, x) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.transition1(self.dense1(x)))
        first = self.transition2(self.dense2(x))
        x = self.pool2(first)
        for i in range(3, self.num_blocks + 1):
            x = getattr(self, f"transition{i}")(getattr(self, f"dense{i}")(x))
        return first, x


class DensePredictionLevel(nn.Module):
    """One scale of the dense prediction structure: "reuse half" (the previous scale
    max-pooled, then BN-ReLU 1x1) concatenated with "learn half" (BN-ReLU 1x1, BN-ReLU 3x3
    stride 2), in that order as in the released model.

    With ``to_1x1`` the 3x3 conv has no padding and stride 1 and the pool is 3x3 stride 1, which
    takes a 3x3 map to 1x1 (the paper's Fig. 1) instead of 2x2 (the released model).
    """

    def __init__(self, in_channels: int, half_channels: int, norm: str, to_1x1: bool = False):
        super().__init__()
        conv_stride, conv_padding = (1, 0) if to_1x1 else (2, 1)
        self.reused = nn.Sequential(
            nn.MaxPool2d(3, stride=1) if to_1x1 else _pool2x2(),
            PreActConv(in_channels, half_channels, 1, norm=norm),
        )
        self.learned = nn.Sequential(
            PreActConv(in_channels, half_channels, 1, norm=norm),
            PreActConv(half_channels, half_channels, 3, conv_stride, conv_padding, norm=norm),
        )
        self.out_channels = 2 * half_channels

    def forward(self, x):
        return torch.cat([self.reused(x), self.learned(x)], dim=1)


class DensePrediction(nn.Module):
    """The paper's dense prediction structure (Fig. 1 right): source 2 is the backbone's last
    transition (learned) concatenated with source 1 pooled and reduced (reused); each later
    source is a :class:`DensePredictionLevel` of the one before. Half of every scale is reused,
    so the structure has fewer parameters than the plain one (14.8M against 18.2M)."""

    def __init__(
        self,
        first_channels: int,
        last_channels: int,
        half_channels: Sequence[int],
        last_map_size: int,
        norm: str,
    ):
        super().__init__()
        if len(half_channels) != _NUM_SOURCES - 1:
            raise ValueError(
                f"MODEL.DSOD.DENSE_HALF_CHANNELS needs {_NUM_SOURCES - 1} entries (sources 2 "
                f"to 6); got {list(half_channels)}"
            )
        self.reuse_first = nn.Sequential(
            _pool2x2(), PreActConv(first_channels, half_channels[0], 1, norm=norm)
        )
        channels = [first_channels, last_channels + half_channels[0]]
        self.levels = nn.ModuleList()
        for i, half in enumerate(half_channels[1:], start=3):
            level = DensePredictionLevel(
                channels[-1], half, norm, to_1x1=(i == _NUM_SOURCES and last_map_size == 1)
            )
            self.levels.append(level)
            channels.append(level.out_channels)
        self.source_channels = channels

    def forward(self, first, last) -> List[torch.Tensor]:
        sources = [first, torch.cat([last, self.reuse_first(first)], dim=1)]
        for level in self.levels:
            sources.append(level(sources[-1]))
        return sources


class PlainPrediction(nn.Module):
    """SSD's plain structure (Fig. 1 left): source 2 is the backbone's last transition and each
    later source is learned from the one before by BN-ReLU 1x1 then BN-ReLU 3x3 stride 2."""

    def __init__(
        self,
        first_channels: int,
        last_channels: int,
        level_channels: Sequence[Sequence[int]],
        last_map_size: int,
        norm: str,
    ):
        super().__init__()
        if len(level_channels) != _NUM_SOURCES - 2:
            raise ValueError(
                f"MODEL.DSOD.PLAIN_CHANNELS needs {_NUM_SOURCES - 2} [bottleneck, out] "
                f"pairs (sources 3 to 6); got {list(level_channels)}"
            )
        channels = [first_channels, last_channels]
        self.levels = nn.ModuleList()
        for i, (mid, out) in enumerate(level_channels, start=3):
            stride, padding = (1, 0) if i == _NUM_SOURCES and last_map_size == 1 else (2, 1)
            self.levels.append(
                nn.Sequential(
                    PreActConv(channels[-1], mid, 1, norm=norm),
                    PreActConv(mid, out, 3, stride, padding, norm=norm),
                )
            )
            channels.append(out)
        self.source_channels = channels

    def forward(self, first, last) -> List[torch.Tensor]:
        sources = [first, last]
        for level in self.levels:
            sources.append(level(sources[-1]))
        return sources


class DSOD(Backbone):
    """DSOD's DenseNet backbone and prediction layers; outputs ``dsod1`` ... ``dsod6``.

    Layout (300 input, DS/64-192-48-1, numbers of the released model):

    - ``stem``: 3x3 s2 A, 3x3 A, 3x3 2A (conv-BN-ReLU), 2x2 max-pool: 128 x 75 x 75.
    - ``stages``: ``dense1`` (6 layers, 416) ``transition1`` (1x1) ``pool1`` (38 x 38),
      ``dense2`` (8, 800) ``transition2`` (1x1, 800: source ``dsod1``) ``pool2`` (19 x 19),
      ``dense3`` (8, 1184) ``transition3`` (1x1, 1184; Table 1 prints 1120, see docs),
      ``dense4`` (8, 1568) ``transition4`` (1x1; 256 in the released model, 1568 in Table 1).
    - ``prediction``: :class:`DensePrediction` or :class:`PlainPrediction`, six sources.

    Every conv is bias-free and Xavier-initialised; the sources are the raw (pre-activation)
    features, L2-normalised, as in the released model.
    """

    @configurable
    def __init__(
        self,
        *,
        stem: str = "stem_block",
        stem_width: int = 64,
        bottleneck_width: int = 192,
        growth_rate: int = 48,
        compression: float = 1.0,
        block_layers: Sequence[int] = (6, 8, 8, 8),
        transition_channels: Sequence[int] = (0, 0, 0, 256),
        transition_without_pooling: bool = True,
        prediction: str = "dense",
        dense_half_channels: Sequence[int] = (256, 256, 128, 128, 128),
        plain_channels: Sequence[Sequence[int]] = ((256, 512), (128, 256), (128, 256), (128, 256)),
        last_map_size: int = 2,
        norm: str = "BN",
        l2norm_scale: float = 20.0,
        in_channels: int = 3,
    ):
        """
        Args:
            stem: "stem_block" (DSOD) or "densenet" (7x7 conv and 3x3 pool, for the ablation).
            stem_width: A, channels of the first two stem convs (the third has 2A).
            bottleneck_width: B, channels of each dense layer's 1x1 bottleneck.
            growth_rate: k, channels each dense layer adds.
            compression: theta; a transition keeps floor(theta * C) of its C input channels.
            block_layers: layers in each of the four dense blocks.
            transition_channels: output channels of the four transitions; 0 means
                floor(compression * input channels).
            transition_without_pooling: False merges blocks 3 and 4 (the ablation's three
                dense blocks).
            prediction: "dense" (learn half, reuse half) or "plain" (SSD-like).
            dense_half_channels: for "dense", the reused half's channels at sources 2 to 6 and
                the learned half's at sources 3 to 6 (the learned half of source 2 is the last
                transition).
            plain_channels: for "plain", [bottleneck, out] channels of sources 3 to 6.
            last_map_size: 2 (released model, 8744 priors at 300) or 1 (paper's Fig. 1, 8732).
            norm: normalisation of every conv, e.g. "BN" or "SyncBN" (see ``get_norm``).
            l2norm_scale: initial scale of the L2Norm on each source.
        """
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"MODEL.DSOD.STEM must be one of {sorted(STEMS)}, got {stem!r}")
        if last_map_size not in (1, 2):
            raise ValueError(f"MODEL.DSOD.LAST_MAP_SIZE must be 1 or 2, got {last_map_size}")
        self.stem = STEMS[stem](in_channels, stem_width, norm)
        self.stages = DenseStages(
            self.stem.out_channels,
            bottleneck_width,
            growth_rate,
            compression,
            block_layers,
            transition_channels,
            transition_without_pooling,
            norm,
        )
        structures = {
            "dense": (DensePrediction, dense_half_channels),
            "plain": (PlainPrediction, plain_channels),
        }
        if prediction not in structures:
            raise ValueError(
                f"MODEL.DSOD.PREDICTION must be 'dense' or 'plain', got {prediction!r}"
            )
        structure, channels = structures[prediction]
        self.prediction = structure(
            self.stages.first_channels, self.stages.out_channels, channels, last_map_size, norm
        )
        source_channels = self.prediction.source_channels
        self.source_norms = nn.ModuleList(L2Norm(c, l2norm_scale) for c in source_channels)
        names = [f"dsod{i}" for i in range(1, _NUM_SOURCES + 1)]
        declare_outputs(self, names, source_channels, stride=8)
        xavier_init(self)

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        dsod = cfg.MODEL.DSOD
        return {
            "stem": dsod.STEM,
            "stem_width": dsod.STEM_WIDTH,
            "bottleneck_width": dsod.BOTTLENECK_WIDTH,
            "growth_rate": dsod.GROWTH_RATE,
            "compression": dsod.COMPRESSION,
            "block_layers": dsod.BLOCK_LAYERS,
            "transition_channels": dsod.TRANSITION_CHANNELS,
            "transition_without_pooling": dsod.TRANSITION_WITHOUT_POOLING,
            "prediction": dsod.PREDICTION,
            "dense_half_channels": dsod.DENSE_HALF_CHANNELS,
            "plain_channels": dsod.PLAIN_CHANNELS,
            "last_map_size": dsod.LAST_MAP_SIZE,
            "norm": dsod.NORM,
            "l2norm_scale": dsod.L2NORM_SCALE,
            "in_channels": input_shape.channels,
        }

    def forward(self, x) -> Dict[str, torch.Tensor]:
        sources = self.prediction(*self.stages(self.stem(x)))
        return {
            name: norm(source)
            for name, norm, source in zip(self._out_features, self.source_norms, sources)
        }


@BACKBONE_REGISTRY.register()
def build_dsod_backbone(cfg, input_shape: ShapeSpec):
    """DSOD backbone with its prediction layers (``MODEL.BACKBONE.NAME: build_dsod_backbone``)."""
    return DSOD(cfg, input_shape)
