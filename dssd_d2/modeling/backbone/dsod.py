"""DSOD (Shen et al. 2017): a DenseNet backbone and prediction layers trained from scratch.

The backbone is the paper's DS/A-B-k-theta network (Table 1): a stem block, four dense blocks of
pre-activation (BN-ReLU-conv) bottleneck layers, two transitions with pooling and two without.
The prediction layers give six sources, each L2-normalised with a learned scale (20 at start),
named ``dsod1`` (finest, 38x38 at 300 input) to ``dsod6`` (2x2, or 1x1 with ``last_map_size=1``).
"""

import math
from typing import Dict, List, Sequence

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from .layers import L2Norm, xavier_init

__all__ = ["DSOD", "build_dsod_backbone"]

_NUM_SOURCES = 6


def _pool2x2():
    """2x2 max-pool, stride 2, rounding up like Caffe: 75 -> 38, 5 -> 3, 3 -> 2."""
    return nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)


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


class DensePredictionLevel(nn.Module):
    """One scale of the dense prediction structure: "learn half" (BN-ReLU 1x1, BN-ReLU 3x3
    stride 2) concatenated with "reuse half" (the previous scale max-pooled, then BN-ReLU 1x1).

    With ``to_1x1`` the 3x3 conv has no padding and stride 1 and the pool is 3x3 stride 1, which
    takes a 3x3 map to 1x1 (the paper's Fig. 1) instead of 2x2 (the released model).
    """

    def __init__(self, in_channels: int, half_channels: int, norm: str, to_1x1: bool = False):
        super().__init__()
        conv_stride, conv_padding = (1, 0) if to_1x1 else (2, 1)
        self.learned = nn.Sequential(
            PreActConv(in_channels, half_channels, 1, norm=norm),
            PreActConv(half_channels, half_channels, 3, conv_stride, conv_padding, norm=norm),
        )
        self.reused = nn.Sequential(
            nn.MaxPool2d(3, stride=1) if to_1x1 else _pool2x2(),
            PreActConv(in_channels, half_channels, 1, norm=norm),
        )
        self.out_channels = 2 * half_channels

    def forward(self, x):
        return torch.cat([self.learned(x), self.reused(x)], dim=1)


def _plain_prediction_level(in_channels, bottleneck_channels, out_channels, norm, to_1x1=False):
    """SSD-like extra level (the paper's "plain" structure): BN-ReLU 1x1, BN-ReLU 3x3 stride 2."""
    conv_stride, conv_padding = (1, 0) if to_1x1 else (2, 1)
    level = nn.Sequential(
        PreActConv(in_channels, bottleneck_channels, 1, norm=norm),
        PreActConv(bottleneck_channels, out_channels, 3, conv_stride, conv_padding, norm=norm),
    )
    level.out_channels = out_channels
    return level


class DSOD(Backbone):
    """DSOD's DenseNet backbone and prediction layers; outputs ``dsod1`` ... ``dsod6``.

    Layout (300 input, DS/64-192-48-1, numbers of the released model):

    - ``stem``: 3x3 s2 A, 3x3 A, 3x3 2A (conv-BN-ReLU), 2x2 max-pool: 128 x 75 x 75.
    - ``dense1`` (6 layers, 416) ``transition1`` (1x1) ``pool1`` (38 x 38),
      ``dense2`` (8, 800) ``transition2`` (1x1, 800: source ``dsod1``) ``pool2`` (19 x 19),
      ``dense3`` (8, 1184) ``transition3`` (1x1, 1184; Table 1 prints 1120, see docs),
      ``dense4`` (8, 1568) ``transition4`` (1x1; 256 in the released model, 1568 in Table 1).
    - ``prediction``: five levels giving ``dsod2`` ... ``dsod6``. Dense: ``dsod2`` is
      ``transition4`` concatenated with ``dsod1`` pooled and reduced; each later source is a
      :class:`DensePredictionLevel` of the previous one. Plain: ``dsod2`` is ``transition4``
      itself and later sources are SSD-like bottleneck levels.

    Every conv is bias-free and Xavier-initialised; the sources are the raw (pre-activation)
    features, L2-normalised, as in the released model.
    """

    @configurable
    def __init__(
        self,
        *,
        stem_width: int = 64,
        bottleneck_width: int = 192,
        growth_rate: int = 48,
        compression: float = 1.0,
        block_layers: Sequence[int] = (6, 8, 8, 8),
        transition_channels: Sequence[int] = (0, 0, 0, 256),
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
            stem_width: A, channels of the first two stem convs (the third has 2A).
            bottleneck_width: B, channels of each dense layer's 1x1 bottleneck.
            growth_rate: k, channels each dense layer adds.
            compression: theta; a transition keeps floor(theta * C) of its C input channels.
            block_layers: layers in each of the four dense blocks.
            transition_channels: output channels of the four transitions; 0 means
                floor(compression * input channels).
            prediction: "dense" (learn half, reuse half) or "plain" (SSD-like).
            dense_half_channels: for "dense", the reused half's channels at sources 2 to 6 and
                the learned half's at sources 3 to 6 (the learned half of source 2 is
                ``transition4``).
            plain_channels: for "plain", [bottleneck, out] channels of sources 3 to 6.
            last_map_size: 2 (released model, 8744 priors at 300) or 1 (paper's Fig. 1, 8732).
            norm: normalisation of every conv, e.g. "BN" or "SyncBN" (see ``get_norm``).
            l2norm_scale: initial scale of the L2Norm on each source.
        """
        super().__init__()
        if len(block_layers) != 4 or len(transition_channels) != 4:
            raise ValueError(
                "MODEL.DSOD.BLOCK_LAYERS and TRANSITION_CHANNELS need one entry per dense block "
                f"(4); got {list(block_layers)} and {list(transition_channels)}"
            )
        if last_map_size not in (1, 2):
            raise ValueError(f"MODEL.DSOD.LAST_MAP_SIZE must be 1 or 2, got {last_map_size}")

        self.stem = nn.Sequential(
            *[
                Conv2d(
                    c_in,
                    c_out,
                    3,
                    stride=s,
                    padding=1,
                    bias=False,
                    norm=get_norm(norm, c_out),
                    activation=nn.ReLU(inplace=True),
                )
                for c_in, c_out, s in [
                    (in_channels, stem_width, 2),
                    (stem_width, stem_width, 1),
                    (stem_width, 2 * stem_width, 1),
                ]
            ],
            _pool2x2(),
        )
        channels = 2 * stem_width
        for i, (num_layers, out) in enumerate(zip(block_layers, transition_channels), start=1):
            block = DenseBlock(num_layers, channels, bottleneck_width, growth_rate, norm)
            out = out or int(math.floor(compression * block.out_channels))
            self.add_module(f"dense{i}", block)
            self.add_module(f"transition{i}", PreActConv(block.out_channels, out, 1, norm=norm))
            if i <= 2:
                self.add_module(f"pool{i}", _pool2x2())
            channels = out
        source_channels = [self.transition2.out_channels]

        self.prediction = nn.ModuleList()
        if prediction == "dense":
            if len(dense_half_channels) != _NUM_SOURCES - 1:
                raise ValueError(
                    f"MODEL.DSOD.DENSE_HALF_CHANNELS needs {_NUM_SOURCES - 1} entries (sources 2 "
                    f"to 6); got {list(dense_half_channels)}"
                )
            # Source 2 reuses source 1: pooled to 19x19 and reduced; its learned half is the
            # backbone's last transition.
            self.reuse_dsod1 = nn.Sequential(
                _pool2x2(), PreActConv(source_channels[0], dense_half_channels[0], 1, norm=norm)
            )
            source_channels.append(channels + dense_half_channels[0])
            for i, half in enumerate(dense_half_channels[1:], start=3):
                level = DensePredictionLevel(
                    source_channels[-1], half, norm, to_1x1=(i == 6 and last_map_size == 1)
                )
                self.prediction.append(level)
                source_channels.append(level.out_channels)
        elif prediction == "plain":
            if len(plain_channels) != _NUM_SOURCES - 2:
                raise ValueError(
                    f"MODEL.DSOD.PLAIN_CHANNELS needs {_NUM_SOURCES - 2} [bottleneck, out] "
                    f"pairs (sources 3 to 6); got {list(plain_channels)}"
                )
            source_channels.append(channels)
            for i, (mid, out) in enumerate(plain_channels, start=3):
                level = _plain_prediction_level(
                    source_channels[-1], mid, out, norm, to_1x1=(i == 6 and last_map_size == 1)
                )
                self.prediction.append(level)
                source_channels.append(out)
        else:
            raise ValueError(
                f"MODEL.DSOD.PREDICTION must be 'dense' or 'plain', got {prediction!r}"
            )
        self.dense_prediction = prediction == "dense"

        self.source_norms = nn.ModuleList(L2Norm(c, l2norm_scale) for c in source_channels)
        names = [f"dsod{i}" for i in range(1, _NUM_SOURCES + 1)]
        self._out_features = names
        self._out_feature_channels = dict(zip(names, source_channels))
        # Nominal strides; with ceil rounding the maps are 38, 19, 10, 5, 3, 2 at 300, so the
        # priors take their steps from MODEL.ANCHOR_GENERATOR.STEPS instead.
        self._out_feature_strides = {name: 2 ** (i + 3) for i, name in enumerate(names)}
        xavier_init(self)

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        dsod = cfg.MODEL.DSOD
        return {
            "stem_width": dsod.STEM_WIDTH,
            "bottleneck_width": dsod.BOTTLENECK_WIDTH,
            "growth_rate": dsod.GROWTH_RATE,
            "compression": dsod.COMPRESSION,
            "block_layers": dsod.BLOCK_LAYERS,
            "transition_channels": dsod.TRANSITION_CHANNELS,
            "prediction": dsod.PREDICTION,
            "dense_half_channels": dsod.DENSE_HALF_CHANNELS,
            "plain_channels": dsod.PLAIN_CHANNELS,
            "last_map_size": dsod.LAST_MAP_SIZE,
            "norm": dsod.NORM,
            "l2norm_scale": dsod.L2NORM_SCALE,
            "in_channels": input_shape.channels,
        }

    def forward(self, x) -> Dict[str, torch.Tensor]:
        x = self.stem(x)
        x = self.pool1(self.transition1(self.dense1(x)))
        first = self.transition2(self.dense2(x))
        x = self.transition4(self.dense4(self.transition3(self.dense3(self.pool2(first)))))
        sources: List[torch.Tensor] = [first]
        if self.dense_prediction:
            x = torch.cat([x, self.reuse_dsod1(first)], dim=1)
        sources.append(x)
        for level in self.prediction:
            x = level(x)
            sources.append(x)
        return {
            name: norm(source)
            for name, norm, source in zip(self._out_features, self.source_norms, sources)
        }


@BACKBONE_REGISTRY.register()
def build_dsod_backbone(cfg, input_shape: ShapeSpec):
    """DSOD backbone with its prediction layers (``MODEL.BACKBONE.NAME: build_dsod_backbone``)."""
    return DSOD(cfg, input_shape)
