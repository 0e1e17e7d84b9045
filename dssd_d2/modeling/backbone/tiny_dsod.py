"""Tiny-DSOD (Li et al., BMVC 2018): DSOD for CPUs, from depthwise convolutions.

Layer settings follow the official Caffe code (``DCOD300_Body`` in lyxok1/Tiny-DSOD's
``python/caffe/model_libs.py``), which is the model of the paper's 0.95M parameters and 1.06
GFLOPs at 300x300:

- ``stem``: 3x3 s2 conv (64), then two depthwise-separable convs (1x1 to 64, 3x3 depthwise; 1x1
  to 128, 3x3 depthwise), 2x2 max-pool: 128 x 75 x 75.
- Four stages of depthwise dense blocks (the paper's DDB-b: 1x1 conv to the growth rate g with
  BN, 3x3 depthwise conv with BN and ReLU, output appended to the input), of 4, 6, 6, 6 layers
  and growth rates 32, 48, 64, 80, each followed by a 1x1 conv-BN-ReLU transition to 128, 128,
  256 and 64 channels. Stage 1's transition is max-pooled (38x38); stage 2's output is the first
  source (128 x 38 x 38), then pooled to 19x19 for stages 3 and 4.
- Source 2 (19x19): the first source pooled and reduced to 64 channels, concatenated with stage
  4's 64 channels. Sources 3 to 6 (10, 5, 3, 2): each concatenates the previous source max-pooled
  and reduced by a 1x1 conv (64) with the previous source through a 1x1 conv and a stride-2 3x3
  depthwise conv (64) (DSOD's "learn half, reuse half", in depthwise form).
- Depthwise FPN (D-FPN): from the coarsest source down, each level is upsampled bilinearly to the
  next finer one, passed through a 3x3 depthwise conv (with bias; on the finest level also a 1x1
  conv), added to it and ReLU'd. The three finest predicted sources take these fused maps; the
  three coarsest are predicted from as they are (the official ``mbox_source_layers``).
- Each source is L2-normalised with a learned scale (20 at start).

Where this differs from the Caffe code, deliberately: the upsampling is PyTorch's bilinear
interpolation (half-pixel centres), where the official Upsample layer samples at
``(x + 1) / ratio - 1``; BatchNorms use PyTorch's defaults (eps 1e-5, momentum 0.1) rather than
Caffe's moving-average fraction 0.999. Neither changes a parameter or a multiply-add.
The prediction layers of the paper (a 1x1 conv to the outputs, then a 3x3 depthwise conv over
them and a BatchNorm) are :func:`pointwise_depthwise`, registered as
``MODEL.SSD_HEAD.PREDICTOR: "pointwise_depthwise"``.
"""

from typing import Dict, List, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ..heads import PREDICTOR_REGISTRY
from .layers import L2Norm, declare_outputs, xavier_init

__all__ = ["TinyDSOD", "build_tiny_dsod_backbone", "pointwise_depthwise"]

_NUM_SOURCES = 6


def _pool2x2():
    """2x2 max-pool, stride 2, rounding up like Caffe: 150 -> 75 -> 38, 19 -> 10, 5 -> 3 -> 2."""
    return nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)


def _conv1x1(in_channels: int, out_channels: int, norm: str, relu: bool = True):
    """Bias-free 1x1 conv with norm (and ReLU): Tiny-DSOD's transitions and "reuse" branches."""
    return Conv2d(
        in_channels,
        out_channels,
        1,
        bias=False,
        norm=get_norm(norm, out_channels),
        activation=nn.ReLU(inplace=True) if relu else None,
    )


def _depthwise3x3(channels: int, norm: str, stride: int = 1, relu: bool = True):
    """Bias-free 3x3 depthwise conv with norm and ReLU."""
    return Conv2d(
        channels,
        channels,
        3,
        stride=stride,
        padding=1,
        groups=channels,
        bias=False,
        norm=get_norm(norm, channels),
        activation=nn.ReLU(inplace=True) if relu else None,
    )


def separable_conv(in_channels: int, out_channels: int, norm: str, stride: int = 1):
    """The official code's separable conv: a plain bias-free 1x1 conv (no norm, no ReLU), then
    a 3x3 depthwise conv with norm and ReLU (stem, and the learned half of sources 3 to 6)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        _depthwise3x3(out_channels, norm, stride),
    )


class DepthwiseDenseLayer(nn.Module):
    """DDB-b: 1x1 conv to ``growth_rate`` channels with norm (no ReLU), 3x3 depthwise conv with
    norm and ReLU; the result is appended to the input channels."""

    def __init__(self, in_channels: int, growth_rate: int, norm: str):
        super().__init__()
        self.pointwise = _conv1x1(in_channels, growth_rate, norm, relu=False)
        self.depthwise = _depthwise3x3(growth_rate, norm)

    def forward(self, x):
        return torch.cat([x, self.depthwise(self.pointwise(x))], dim=1)


class DepthwiseDenseBlock(nn.Sequential):
    def __init__(self, num_layers: int, in_channels: int, growth_rate: int, norm: str):
        super().__init__(
            *[
                DepthwiseDenseLayer(in_channels + i * growth_rate, growth_rate, norm)
                for i in range(num_layers)
            ]
        )
        self.out_channels = in_channels + num_layers * growth_rate


class DownsampleLevel(nn.Module):
    """One coarser source: [max-pool 2x2 then 1x1 conv, 1x1 conv then 3x3 depthwise stride 2],
    each ``half_channels``, concatenated in that order (the official ``add_bl_layer2``)."""

    def __init__(self, in_channels: int, half_channels: int, norm: str):
        super().__init__()
        self.reused = nn.Sequential(_pool2x2(), _conv1x1(in_channels, half_channels, norm))
        self.learned = separable_conv(in_channels, half_channels, norm, stride=2)
        self.out_channels = 2 * half_channels

    def forward(self, x):
        return torch.cat([self.reused(x), self.learned(x)], dim=1)


class TopDownFusion(nn.Module):
    """One D-FPN step: the coarser map, upsampled bilinearly to the finer one, through a 3x3
    depthwise conv with bias (and a 1x1 conv to ``out_channels`` when ``project``), added to the
    finer map, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, project: bool):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels)
        self.project = nn.Conv2d(in_channels, out_channels, 1, bias=False) if project else None

    def forward(self, coarse, fine):
        upsampled = F.interpolate(
            coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False
        )
        x = self.depthwise(upsampled)
        if self.project is not None:
            x = self.project(x)
        return F.relu(x + fine)


class TinyDSOD(Backbone):
    """Tiny-DSOD's backbone, prediction layers and D-FPN; outputs ``tiny_dsod1`` (finest, 38x38
    at 300 input) to ``tiny_dsod6`` (2x2). See the module docstring for the layout."""

    @configurable
    def __init__(
        self,
        *,
        stem_channels: Sequence[int] = (64, 64, 128),
        block_layers: Sequence[int] = (4, 6, 6, 6),
        growth_rates: Sequence[int] = (32, 48, 64, 80),
        transition_channels: Sequence[int] = (128, 128, 256, 64),
        extra_half_channels: Sequence[int] = (64, 64, 64, 64, 64),
        fpn_sources: int = 3,
        norm: str = "BN",
        l2norm_scale: float = 20.0,
        in_channels: int = 3,
    ):
        """
        Args:
            stem_channels: of the 3x3 s2 conv and the two separable convs of the stem.
            block_layers, growth_rates, transition_channels: per stage (4 stages).
            extra_half_channels: the pooled half of source 2 (its other half is stage 4's
                transition), then the two halves of each of sources 3 to 6.
            fpn_sources: how many of the finest sources are predicted from the D-FPN's fused
                maps (3 in the official model; 0 turns the D-FPN off). The top-down path always
                runs down to the finest source: any value above 0 has the same parameters.
            norm: of every conv with a norm (``get_norm`` name).
            l2norm_scale: initial scale of the L2Norm on each source.
        """
        super().__init__()
        per_stage = {
            "BLOCK_LAYERS": block_layers,
            "GROWTH_RATES": growth_rates,
            "TRANSITION_CHANNELS": transition_channels,
        }
        for key, values in per_stage.items():
            if len(values) != 4:
                raise ValueError(f"MODEL.TINY_DSOD.{key} needs 4 entries (stages); got {values}")
        if len(stem_channels) != 3:
            raise ValueError(f"MODEL.TINY_DSOD.STEM_CHANNELS needs 3 entries; got {stem_channels}")
        if len(extra_half_channels) != _NUM_SOURCES - 1:
            raise ValueError(
                f"MODEL.TINY_DSOD.EXTRA_HALF_CHANNELS needs {_NUM_SOURCES - 1} entries (sources 2 "
                f"to 6); got {list(extra_half_channels)}"
            )
        if not 0 <= fpn_sources < _NUM_SOURCES:
            raise ValueError(f"MODEL.TINY_DSOD.FPN_SOURCES must be in [0, 5]; got {fpn_sources}")

        first, second, third = stem_channels
        self.stem = nn.Sequential(
            Conv2d(
                in_channels,
                first,
                3,
                stride=2,
                padding=1,
                bias=False,
                norm=get_norm(norm, first),
                activation=nn.ReLU(inplace=True),
            ),
            separable_conv(first, second, norm),
            separable_conv(second, third, norm),
            _pool2x2(),
        )
        channels = third
        for i, (layers, growth, out) in enumerate(
            zip(block_layers, growth_rates, transition_channels), start=1
        ):
            block = DepthwiseDenseBlock(layers, channels, growth, norm)
            self.add_module(f"stage{i}", block)
            self.add_module(f"transition{i}", _conv1x1(block.out_channels, out, norm))
            channels = out
        self.pool1, self.pool2 = _pool2x2(), _pool2x2()

        # Source 2 reuses source 1, pooled to 19x19 and reduced.
        source_channels = [transition_channels[1]]
        self.reuse_first = nn.Sequential(
            _pool2x2(), _conv1x1(source_channels[0], extra_half_channels[0], norm)
        )
        source_channels.append(extra_half_channels[0] + transition_channels[3])
        self.extra = nn.ModuleList()
        for half in extra_half_channels[1:]:
            self.extra.append(DownsampleLevel(source_channels[-1], half, norm))
            source_channels.append(2 * half)

        # The top-down path runs from the coarsest source to the finest, whatever the number of
        # fused sources predicted from: each level adds the upsampled level above, so sources 2
        # to 6 need equal channels (the finest, source 1, gets a 1x1 projection).
        self.fpn_sources = fpn_sources
        self.fpn = nn.ModuleList()
        if fpn_sources:
            if len(set(source_channels[1:])) != 1:
                raise ValueError(
                    "The D-FPN adds each source to the upsampled next one, so sources 2 to 6 "
                    "need equal channels; MODEL.TINY_DSOD.{TRANSITION_CHANNELS, "
                    f"EXTRA_HALF_CHANNELS}} give {source_channels}"
                )
            for level in range(_NUM_SOURCES - 1):
                top = source_channels[level + 1]
                self.fpn.append(TopDownFusion(top, source_channels[level], project=level == 0))

        self.source_norms = nn.ModuleList(L2Norm(c, l2norm_scale) for c in source_channels)
        names = [f"tiny_dsod{i}" for i in range(1, _NUM_SOURCES + 1)]
        declare_outputs(self, names, source_channels, stride=8)
        xavier_init(self)

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        tiny = cfg.MODEL.TINY_DSOD
        return {
            "stem_channels": tiny.STEM_CHANNELS,
            "block_layers": tiny.BLOCK_LAYERS,
            "growth_rates": tiny.GROWTH_RATES,
            "transition_channels": tiny.TRANSITION_CHANNELS,
            "extra_half_channels": tiny.EXTRA_HALF_CHANNELS,
            "fpn_sources": tiny.FPN_SOURCES,
            "norm": tiny.NORM,
            "l2norm_scale": tiny.L2NORM_SCALE,
            "in_channels": input_shape.channels,
        }

    def forward(self, x) -> Dict[str, torch.Tensor]:
        x = self.pool1(self.transition1(self.stage1(self.stem(x))))
        first = self.transition2(self.stage2(x))
        x = self.transition4(self.stage4(self.transition3(self.stage3(self.pool2(first)))))
        sources: List[torch.Tensor] = [first, torch.cat([self.reuse_first(first), x], dim=1)]
        for level in self.extra:
            sources.append(level(sources[-1]))
        if self.fpn_sources:
            fused, outputs = sources[-1], list(sources)
            for level in reversed(range(_NUM_SOURCES - 1)):
                fused = self.fpn[level](fused, sources[level])
                if level < self.fpn_sources:
                    outputs[level] = fused
            sources = outputs
        return {
            name: norm(source)
            for name, norm, source in zip(self._out_features, self.source_norms, sources)
        }


@PREDICTOR_REGISTRY.register()
def pointwise_depthwise(in_channels: int, out_channels: int, kernel_size: int, norm: str):
    """Tiny-DSOD's class and box predictors (the official head's ``mobile`` branch): a bias-free
    1x1 conv to the outputs, a bias-free depthwise conv over them, then a norm with a learned
    scale and shift (its shift is the predictor's bias). About 8x fewer parameters than a 3x3
    conv on 128 channels. The official depthwise weights start at Caffe's default constant 0; a
    norm follows, so any other start gives the same output scale, and a zero one would make the
    norm divide its first gradients by sqrt(eps): both start normal, std 0.01."""
    pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
    depthwise = Conv2d(
        out_channels,
        out_channels,
        kernel_size,
        padding=kernel_size // 2,
        groups=out_channels,
        bias=False,
        norm=get_norm(norm, out_channels),
    )
    for conv in (pointwise, depthwise):
        nn.init.normal_(conv.weight, std=0.01)
    return nn.Sequential(pointwise, depthwise)


@BACKBONE_REGISTRY.register()
def build_tiny_dsod_backbone(cfg, input_shape: ShapeSpec):
    """Tiny-DSOD backbone with its prediction layers and D-FPN
    (``MODEL.BACKBONE.NAME: build_tiny_dsod_backbone``)."""
    return TinyDSOD(cfg, input_shape)
