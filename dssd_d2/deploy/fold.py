"""Fold BatchNorm into the convolution before it (DSSD paper, Eq. 1-4), for inference.

In eval mode a BatchNorm after a convolution is a per-channel affine map, so it can be merged
into the convolution's weights and bias:

    w' = w * gamma / sqrt(var + eps),    b' = (b - mean) * gamma / sqrt(var + eps) + beta

which removes one pass over every normalised feature map. A BatchNorm whose input does not come
straight from a convolution (DSOD's pre-activation BN-ReLU-conv over a concatenation, or a BN
after an activation) cannot be folded and is left as it is.
"""

import itertools
import logging
from collections.abc import Iterator

import torch
from torch import nn

from detectron2.layers import FrozenBatchNorm2d

from ..modeling.backbone.dsod import DenseLayer

__all__ = ["calibrate_batch_norms", "count_batch_norms", "fold_batch_norm", "fold_conv_bn"]

logger = logging.getLogger(__name__)

BATCH_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm, FrozenBatchNorm2d)

# Modules whose forward feeds child ``first``'s output only into child ``second``, like two
# consecutive entries of an nn.Sequential: first's last conv may absorb second's first BN.
_CHAINED_CHILDREN: dict[type[nn.Module], tuple[str, str]] = {DenseLayer: ("bottleneck", "conv")}


def _scale_and_shift(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode BatchNorm as ``x * scale + shift`` (per channel, float64 for accuracy)."""
    if bn.running_mean is None:
        raise ValueError(f"{bn} has no running statistics (track_running_stats=False)")
    mean, var = bn.running_mean.double(), bn.running_var.double()
    weight = torch.ones_like(mean) if bn.weight is None else bn.weight.double()
    bias = torch.zeros_like(mean) if bn.bias is None else bn.bias.double()
    scale = weight / torch.sqrt(var + bn.eps)
    return scale, bias - mean * scale


@torch.no_grad()
def fold_conv_bn(conv: nn.Module, bn: nn.Module):
    """Merge eval-mode ``bn`` into ``conv`` (nn.Conv2d or nn.ConvTranspose2d), in place."""
    scale, shift = _scale_and_shift(bn)
    weight = conv.weight.double()
    if isinstance(conv, nn.ConvTranspose2d):  # (in, out / groups, kh, kw)
        in_channels, out_per_group = weight.shape[:2]
        grouped = weight.view(conv.groups, in_channels // conv.groups, out_per_group, -1)
        weight = grouped * scale.view(conv.groups, 1, out_per_group, 1)
    else:  # (out, in / groups, kh, kw)
        weight = weight * scale.view(-1, 1, 1, 1)
    bias = shift if conv.bias is None else conv.bias.double() * scale + shift
    dtype = conv.weight.dtype
    conv.weight = nn.Parameter(weight.view_as(conv.weight).to(dtype), conv.weight.requires_grad)
    conv.bias = nn.Parameter(bias.to(dtype), conv.weight.requires_grad)


def _is_plain_conv(module: nn.Module) -> bool:
    """A convolution whose output is its raw result (Detectron2's Conv2d may add norm/act)."""
    return (
        isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))
        and getattr(module, "norm", None) is None
        and getattr(module, "activation", None) is None
    )


def _last_leaf(module: nn.Module) -> nn.Module:
    while isinstance(module, nn.Sequential) and len(module):
        module = module[-1]
    return module


def _first_leaf(module: nn.Module) -> tuple[nn.Module, nn.Sequential | None]:
    """The first module run by ``module`` and the Sequential holding it (None: ``module``)."""
    parent = None
    while isinstance(module, nn.Sequential) and len(module):
        parent, module = module, module[0]
    return module, parent


def _chained_pairs(module: nn.Module) -> Iterator[tuple[nn.Module, nn.Module, str]]:
    """(producer, consumer, consumer's name in ``module``) for children run one after another."""
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for first, second in itertools.pairwise(names):
            yield module._modules[first], module._modules[second], second
    elif type(module) in _CHAINED_CHILDREN:
        first, second = _CHAINED_CHILDREN[type(module)]
        yield getattr(module, first), getattr(module, second), second


def count_batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, BATCH_NORMS) for m in model.modules())


@torch.no_grad()
def fold_batch_norm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm (BatchNorm2d, SyncBatchNorm, FrozenBatchNorm2d) that directly follows
    a convolution into it; returns ``model``, changed in place and put in eval mode.

    For inference only: folding uses the running statistics, which is what eval mode computes,
    and the folded model no longer has the BatchNorm layers to train. Two places are recognised:
    Detectron2's ``Conv2d(..., norm=BN)`` (ResNet, FPN, DSSD, our heads and extra layers) and a
    convolution followed by a BatchNorm in an ``nn.Sequential`` (also across nested Sequentials
    and DSOD's bottleneck-then-3x3 dense layers). Folded BatchNorms become ``nn.Identity``.
    """
    model.eval()
    before = count_batch_norms(model)
    for module in list(model.modules()):
        norm = getattr(module, "norm", None)
        if isinstance(module, nn.Conv2d) and isinstance(norm, BATCH_NORMS):
            fold_conv_bn(module, norm)
            module.norm = None  # Detectron2's Conv2d applies norm, then activation
        for producer, consumer, name in _chained_pairs(module):
            conv = _last_leaf(producer)
            bn, bn_parent = _first_leaf(consumer)
            if _is_plain_conv(conv) and isinstance(bn, BATCH_NORMS):
                fold_conv_bn(conv, bn)
                if bn_parent is None:
                    setattr(module, name, nn.Identity())
                else:
                    bn_parent[0] = nn.Identity()
    after = count_batch_norms(model)
    logger.info(f"Folded {before - after} of {before} BatchNorm layers into convolutions.")
    return model


@torch.no_grad()
def calibrate_batch_norms(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Set the running statistics of every trainable BatchNorm of an SSD-family model to those of
    ``images`` (N, C, H, W, before normalisation), then put it in eval mode.

    For models with random weights (tests, benchmarks): fresh statistics (mean 0, variance 1)
    let activations grow layer after layer, up to inf through DSSD's products, whereas a
    trained model's BatchNorms keep them near unit scale.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch gives exactly its statistics
    model.train()
    features = model.backbone((images - model.pixel_mean) / model.pixel_std)
    model.head([features[f] for f in model.head_in_features])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()
