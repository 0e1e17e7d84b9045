"""Shape-only passes on the meta device: what a module outputs for an input of some size, in
milliseconds and without touching its weights (backbones size their layers with them, the
build-time checks of :mod:`dssd_d2.checks` find too-small maps and BatchNorm batches)."""

import itertools
from typing import Tuple

import torch
from torch import nn
from torch.func import functional_call

__all__ = ["feature_sizes", "meta_call"]


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


def feature_sizes(backbone: nn.Module, image_size: Tuple[int, int], in_channels: int = 3):
    """(H, W) of every output of ``backbone`` for one ``image_size`` input (a :func:`meta_call`)."""
    image = torch.empty(1, in_channels, *image_size, device="meta")
    return {name: tuple(x.shape[-2:]) for name, x in meta_call(backbone, image).items()}
