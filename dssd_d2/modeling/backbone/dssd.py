"""DSSD's deconvolution decoder (Fu et al. 2017, Sec. 3 and Fig. 1, 3) as a Detectron2 backbone.

Like Detectron2's FPN, it wraps a bottom-up backbone (a ResNet-SSD by default) as
``self.bottom_up`` and returns one map per prediction scale, so any Detectron2 model that takes a
backbone (RetinaNet, ...) can use it. Unlike FPN, the upsampling is learned (a deconvolution whose
kernel follows the actual map sizes: 1 -> 2 -> 4 or 1 -> 3 -> 5 -> 10), each module refines both
paths with BatchNorm'd convolutions and the paths are combined by an element-wise product.
"""

import logging
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from fvcore.nn import weight_init
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import Conv2d, ConvTranspose2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ...shapes import feature_sizes

__all__ = [
    "DeconvolutionModule",
    "DSSDBackbone",
    "build_dssd_backbone",
    "deconv_geometry",
]

logger = logging.getLogger(__name__)


def deconv_geometry(coarse: int, fine: int) -> Optional[Tuple[int, int, int]]:
    """(kernel, stride, padding) of a deconvolution from a ``coarse``-sized map to ``fine``.

    The DSSD paper's choices: 2x2 stride 2 to double (5 -> 10, and 1 -> 2, which equals its
    2x2 stride 1), 3x3 stride 1 to grow by two (1 -> 3, 3 -> 5); plus 3x3 stride 2 padding 1
    for 2n - 1 (e.g. 10 -> 19, SSD300's maps). Returns None for any other pair.
    """
    if fine == 2 * coarse:
        return 2, 2, 0
    if 0 < fine - coarse <= 2:
        return fine - coarse + 1, 1, 0
    if fine == 2 * coarse - 1:
        return 3, 2, 1
    return None


class DeconvolutionModule(nn.Module):
    """DSSD paper, Fig. 3: upsample the coarser decoder map (deconvolution, 3x3 conv, norm),
    refine the finer bottom-up map (3x3 conv, norm, ReLU, 3x3 conv, norm), then combine them
    element-wise (product or sum) and apply ReLU.
    """

    def __init__(
        self,
        top_channels: int,
        lateral_channels: int,
        out_channels: int,
        *,
        deconv_kernel: Tuple[int, int],
        deconv_stride: Tuple[int, int],
        deconv_padding: Tuple[int, int],
        combine: str = "prod",
        norm: str = "BN",
        deconv_bias: bool = False,
    ):
        super().__init__()
        if combine not in ("prod", "sum"):
            raise ValueError(f'MODEL.DSSD.COMBINE must be "prod" or "sum", got {combine!r}')
        self.combine = combine
        use_bias = norm == ""
        self.deconv = ConvTranspose2d(
            top_channels,
            out_channels,
            deconv_kernel,
            stride=deconv_stride,
            padding=deconv_padding,
            bias=use_bias or deconv_bias,
        )

        def conv3x3(in_channels, activation=None):
            return Conv2d(
                in_channels,
                out_channels,
                3,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, out_channels),
                activation=activation,
            )

        self.top_conv = conv3x3(out_channels)
        self.lateral_conv1 = conv3x3(lateral_channels, activation=F.relu)
        self.lateral_conv2 = conv3x3(out_channels)
        for layer in (self.deconv, self.top_conv, self.lateral_conv1, self.lateral_conv2):
            weight_init.c2_msra_fill(layer)

    def forward(self, top, lateral):
        top = self.top_conv(self.deconv(top))
        lateral = self.lateral_conv2(self.lateral_conv1(lateral))
        return F.relu(top * lateral if self.combine == "prod" else top + lateral)


class DSSDBackbone(Backbone):
    """The deconvolution side of DSSD over a bottom-up backbone.

    The coarsest input feature (e.g. ``res9``, 1x1) is output as it is; each finer one is the
    lateral input of a :class:`DeconvolutionModule` fed by the decoder map above it. Outputs are
    ``dssd_<in feature>`` (finest first), with ``out_channels`` channels except the coarsest,
    which keeps the bottom-up's. Strides are the bottom-up's.

    The decoder is built for one square input size (the deconvolution kernels follow the map
    sizes); ``padding_constraints`` asks Detectron2 to pad every batch to that square.

    Checkpoints of the bottom-up network alone load too: keys ``<prefix><name>`` that belong to
    the bottom-up (an SSD model's ``backbone.res3...``) are read as
    ``<prefix>bottom_up.<name>``, so an SSD321 checkpoint initialises DSSD321's shared part and
    the checkpointer reports the decoder's weights as missing.
    """

    @configurable
    def __init__(
        self,
        *,
        bottom_up: Backbone,
        in_features: Sequence[str],
        out_channels: int,
        image_size: Union[int, Tuple[int, int]],
        combine: str = "prod",
        norm: str = "BN",
        deconv_bias: bool = False,
        in_channels: int = 3,
    ):
        """
        Args:
            bottom_up: the backbone to decode; must output every feature in ``in_features``.
            in_features: bottom-up features, finest first, that get a decoder output.
            out_channels: channels of the deconvolution modules.
            image_size: the input size (an int for a square) the decoder is built for.
            combine: "prod" or "sum", see :class:`DeconvolutionModule`.
            norm: normalization after each conv of the deconvolution modules.
            deconv_bias: give each deconvolution a bias also with a norm (official DSSD).
            in_channels: image channels, to infer the bottom-up's map sizes.
        """
        super().__init__()
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        self.image_size = tuple(image_size)
        bottom_up_shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in bottom_up_shapes]
        if missing or len(in_features) < 2:
            raise ValueError(
                f"MODEL.DSSD.IN_FEATURES must name at least two outputs of the bottom-up "
                f"backbone, finest first; {missing or list(in_features)} is not possible with "
                f"its outputs {list(bottom_up_shapes)}"
            )
        sizes = feature_sizes(bottom_up, self.image_size, in_channels)

        self.bottom_up = bottom_up
        self.in_features = tuple(in_features)
        self.deconv_modules = []  # coarse to fine; registered as deconv_<lateral feature>
        top_channels = bottom_up_shapes[in_features[-1]].channels
        for coarse, fine in zip(in_features[::-1], in_features[-2::-1]):
            geometry = [deconv_geometry(c, f) for c, f in zip(sizes[coarse], sizes[fine])]
            if None in geometry:
                raise ValueError(
                    f"No deconvolution takes {coarse} ({sizes[coarse]}) to {fine} "
                    f"({sizes[fine]}) at input size {self.image_size}: the sizes of consecutive "
                    "MODEL.DSSD.IN_FEATURES must double, grow by 1 or 2, or go n -> 2n - 1. "
                    "Check INPUT.FIXED_SIZE and MODEL.DSSD.IN_FEATURES."
                )
            kernel, stride, padding = zip(*geometry)
            module = DeconvolutionModule(
                top_channels,
                bottom_up_shapes[fine].channels,
                out_channels,
                deconv_kernel=kernel,
                deconv_stride=stride,
                deconv_padding=padding,
                combine=combine,
                norm=norm,
                deconv_bias=deconv_bias,
            )
            self.add_module(f"deconv_{fine}", module)
            self.deconv_modules.append(module)
            top_channels = out_channels

        self._out_features = [f"dssd_{f}" for f in in_features]
        self._out_feature_strides = {f"dssd_{f}": bottom_up_shapes[f].stride for f in in_features}
        self._out_feature_channels = {f"dssd_{f}": out_channels for f in in_features}
        self._out_feature_channels[f"dssd_{in_features[-1]}"] = bottom_up_shapes[
            in_features[-1]
        ].channels

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        # As Detectron2's FPN: the bottom-up is built from the same config, untouched; it owns
        # its outputs and the decoder reads MODEL.DSSD.IN_FEATURES among them.
        bottom_up = BACKBONE_REGISTRY.get(cfg.MODEL.DSSD.BOTTOM_UP)(cfg, input_shape)
        return {
            "bottom_up": bottom_up,
            "in_features": cfg.MODEL.DSSD.IN_FEATURES,
            "out_channels": cfg.MODEL.DSSD.OUT_CHANNELS,
            "image_size": cfg.INPUT.FIXED_SIZE,
            "combine": cfg.MODEL.DSSD.COMBINE,
            "norm": cfg.MODEL.DSSD.NORM,
            "deconv_bias": cfg.MODEL.DSSD.DECONV_BIAS,
            "in_channels": input_shape.channels,
        }

    @property
    def padding_constraints(self):
        h, w = self.image_size
        return {"square_size": h} if h == w else {}

    def forward(self, x) -> Dict[str, torch.Tensor]:
        if tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(
                f"The DSSD decoder was built for {self.image_size} inputs (INPUT.FIXED_SIZE) "
                f"but got {tuple(x.shape[-2:])}"
            )
        bottom_up_features = self.bottom_up(x)
        top = bottom_up_features[self.in_features[-1]]
        results = [top]
        for module, fine in zip(self.deconv_modules, self.in_features[-2::-1]):
            top = module(top, bottom_up_features[fine])
            results.insert(0, top)
        return dict(zip(self._out_features, results))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Read bottom-up keys saved without ``bottom_up.`` (see the class docstring); keys whose
        shape differs are left alone so the checkpointer reports them as unexpected."""
        bottom_up_state = self.bottom_up.state_dict()
        bottom_up_children = {name for name, _ in self.bottom_up.named_children()}
        remapped = 0
        for key in list(state_dict):
            name = key[len(prefix) :]
            if not key.startswith(prefix) or name.split(".", 1)[0] not in bottom_up_children:
                continue
            new_key = prefix + "bottom_up." + name
            own = bottom_up_state.get(name)
            if new_key in state_dict or (own is not None and own.shape != state_dict[key].shape):
                continue  # left as is: reported as unexpected
            state_dict[new_key] = state_dict.pop(key)
            remapped += 1
        if remapped:
            logger.info(
                f"Read {remapped} weights of {prefix}* as {prefix}bottom_up.* "
                "(a checkpoint of the bottom-up network without the decoder)."
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@BACKBONE_REGISTRY.register()
def build_dssd_backbone(cfg, input_shape: ShapeSpec):
    """DSSD decoder (MODEL.DSSD.*) over the MODEL.DSSD.BOTTOM_UP backbone, for INPUT.FIXED_SIZE."""
    return DSSDBackbone(cfg, input_shape)
