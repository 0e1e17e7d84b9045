"""Small layers and helpers shared by the SSD-family backbones."""

from typing import List, Sequence, Tuple

import torch
from torch import nn
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


def _output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _pad_single_pixel_input(conv: nn.Conv2d, inputs):
    """Forward pre-hook of :func:`guard_single_pixel_strides`."""
    if not torch.is_grad_enabled() or torch.jit.is_tracing():
        return None  # only weight gradients go wrong: inference and export stay as they were
    x = inputs[0]
    pads = []  # F.pad's order: right, then bottom
    for dim, axis in ((1, -1), (0, -2)):
        geometry = conv.kernel_size[dim], conv.stride[dim], conv.padding[dim], conv.dilation[dim]
        same_output = _output_size(1, *geometry) == _output_size(2, *geometry)
        pads.append(int(x.shape[axis] == 1 and conv.stride[dim] > 1 and same_output))
    if any(pads):
        return (F.pad(x, (0, pads[0], 0, pads[1])),) + tuple(inputs[1:])
    return None


def guard_single_pixel_strides(model: nn.Module) -> nn.Module:
    """Give every strided convolution of ``model`` a zero pixel right of (or below) an input one
    pixel wide (or high), where the output stays the same: the new pixel only replaces padding.
    Only while gradients are recorded; inference and tracing see the model unchanged.

    Works around oneDNN 3.12 (PyTorch 2.14): its bfloat16 weight-gradient kernels for
    AVX512-BF16 and AMX leave the taps right of a one-pixel-wide input unwritten at stride 2,
    returning uninitialised memory as their gradient (mostly 0, at times 1e26 or NaN). SSDlite's
    last extra level meets such a map at 256 pixels of input and below, Tiny-DSOD's at 128."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and max(m.stride) > 1 and m.padding_mode == "zeros":
            m.register_forward_pre_hook(_pad_single_pixel_input)
    return model
