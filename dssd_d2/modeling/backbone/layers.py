"""Small layers and helpers shared by the SSD-family backbones."""

import itertools
from typing import List, Sequence, Tuple

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from detectron2.modeling import Backbone


def xavier_init(module: nn.Module):
    """Xavier-uniform weights, zero biases for every conv: SSD's and DSOD's init of new layers."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learned per-channel scale (ParseNet).

    SSD puts it on conv4_3 (and DSOD on every source) because early features have a much larger
    magnitude than later ones; the scale starts at ``scale`` (20 in both papers).
    """

    def __init__(self, channels: int, scale: float = 20.0, eps: float = 1e-10):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x):
        return F.normalize(x, p=2.0, dim=1, eps=self.eps) * self.weight.view(1, -1, 1, 1)


def declare_outputs(backbone: Backbone, names: Sequence[str], channels: Sequence[int], stride: int):
    """Set a backbone's outputs: ``names`` with their ``channels`` and nominal strides doubling
    from ``stride``. SSD-style maps round up (38, 19, 10, 5, 3, 2 at 300), so the priors take
    their steps from MODEL.ANCHOR_GENERATOR.STEPS, not from these strides."""
    backbone._out_features = list(names)
    backbone._out_feature_channels = dict(zip(names, channels))
    backbone._out_feature_strides = {name: stride * 2**i for i, name in enumerate(names)}


def extra_level_settings(
    conv_dims: Sequence[Sequence[int]],
    strides: Sequence[int],
    paddings: Sequence[int],
    kernel_sizes: Sequence[int],
) -> List[Tuple[int, int, int, int, int]]:
    """(bottleneck, out, stride, padding, kernel) per MODEL.SSD_EXTRAS level, lengths checked."""
    lengths = [len(conv_dims), len(strides), len(paddings), len(kernel_sizes)]
    if len(set(lengths)) != 1:
        raise ValueError(
            "MODEL.SSD_EXTRAS.{CONV_DIMS, STRIDES, PADDINGS, KERNEL_SIZES} must have one entry "
            f"per extra level; got lengths {lengths}"
        )
    return [
        (mid, out, stride, padding, kernel)
        for (mid, out), stride, padding, kernel in zip(conv_dims, strides, paddings, kernel_sizes)
    ]


def meta_call(module: nn.Module, *inputs):
    """``module(*inputs)`` on the meta device, in eval mode: shapes only, no arithmetic and no
    change to the module's state (its parameters, buffers and train/eval flags stay as they
    were), so it costs milliseconds even for ResNet-101 at 513x513. Forward hooks still run."""
    meta_state = {
        name: torch.empty_like(tensor, device="meta")
        for name, tensor in itertools.chain(module.named_parameters(), module.named_buffers())
    }
    modes = {m: m.training for m in module.modules()}
    module.eval()  # batch of one: BatchNorm must not need batch statistics
    try:
        return functional_call(module, meta_state, inputs)
    finally:
        for m, training in modes.items():
            m.training = training


def feature_sizes(backbone: Backbone, image_size: Tuple[int, int], in_channels: int = 3):
    """(H, W) of every output of ``backbone`` for one ``image_size`` input (a :func:`meta_call`)."""
    image = torch.empty(1, in_channels, *image_size, device="meta")
    return {name: tuple(x.shape[-2:]) for name, x in meta_call(backbone, image).items()}
